"""The maintenance tasks, on the small `maintenance` queue, never in the GPU task: the job sweep
(`worker.sweep`), one webhook delivery attempt, and the sweep that re-sends due deliveries."""
from __future__ import annotations

from celery import current_app, shared_task

from shared.broker import DELIVER_WEBHOOK, SWEEP, SWEEP_WEBHOOKS
from shared.webhooks import outbox, sender
from worker.context import current_services
from worker.sweep import sweep


@shared_task(name=SWEEP, ignore_result=True)
def run_sweep() -> dict[str, list[str]]:
    report = sweep(current_services(), current_app)
    return {"resent": report.resent, "failed": report.failed, "canceled": report.canceled}


@shared_task(name=DELIVER_WEBHOOK, ignore_result=True)
def deliver_webhook(event_id: str) -> None:
    sender.attempt(current_services(), current_app, event_id)


@shared_task(name=SWEEP_WEBHOOKS, ignore_result=True)
def sweep_webhooks() -> list[str]:
    return outbox.sweep(current_services(), current_app)
