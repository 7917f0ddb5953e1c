"""Celery tasks for webhooks, on the small `maintenance` queue, never in the GPU task:
one delivery attempt, and the periodic sweep that re-sends due deliveries."""
from __future__ import annotations

from celery import current_app, shared_task

from shared.webhooks import delivery, outbox
from worker.broker import DELIVER_WEBHOOK, SWEEP_WEBHOOKS
from worker.tasks import current_services


@shared_task(name=DELIVER_WEBHOOK, ignore_result=True)
def deliver_webhook(event_id: str) -> None:
    delivery.attempt(current_services(), current_app, event_id)


@shared_task(name=SWEEP_WEBHOOKS, ignore_result=True)
def sweep_webhooks() -> list[str]:
    return outbox.sweep(current_services(), current_app)
