"""Celery tasks: thin wrappers; the work is in `worker.runner` and `worker.sweep`.

Heavy state (the VGG network, style targets) is cached per process inside the engine, and the
database engine, storage and Redis client per process here, so nothing heavy is built per job.
"""
from __future__ import annotations

import functools

from celery import current_app, shared_task

from shared.config import Settings
from shared.services import Services
from worker.broker import RUN_JOB, SWEEP
from worker.runner import JobRun
from worker.sweep import sweep


@functools.cache
def services(settings: Settings) -> Services:
    return Services(settings)


def current_services() -> Services:
    return services(current_app.conf.atelier_settings)


@shared_task(name=RUN_JOB, ignore_result=True)
def run_job(job_id: str) -> None:
    JobRun(current_services(), job_id).execute()


@shared_task(name=SWEEP, ignore_result=True)
def run_sweep() -> dict[str, list[str]]:
    report = sweep(current_services(), current_app)
    return {"resent": report.resent, "failed": report.failed, "canceled": report.canceled}
