"""The maintenance tasks, on the small `maintenance` queue, never in the GPU task: the job sweep
(`worker.sweep`), one webhook delivery attempt, the sweep that re-sends due deliveries, and the
retention sweep (`shared.retention`)."""
from __future__ import annotations

from celery import current_app, shared_task

from shared import retention
from shared.broker import DELIVER_WEBHOOK, SWEEP, SWEEP_RETENTION, SWEEP_WEBHOOKS
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


@shared_task(name=SWEEP_RETENTION, ignore_result=True)
def sweep_retention() -> list[str]:
    """One batch; a full batch means more may be due, so the next is sent at once."""
    services = current_services()
    removed = retention.sweep(services)
    if len(removed) >= services.settings.retention_batch_size:
        current_app.send_task(SWEEP_RETENTION)
    return removed
