"""The per-process `Services` a task uses, built once from its Celery app's settings.

Heavy state (the VGG network, style targets) is cached per process inside the engine; the
database engine, storage and Redis client here, so nothing heavy is built per task.
"""
from __future__ import annotations

import functools

from celery import current_app

from shared.config import Settings
from shared.services import Services


@functools.cache
def _services(settings: Settings) -> Services:
    return Services(settings)


def current_services() -> Services:
    return _services(current_app.conf.atelier_settings)
