"""A job's status changed: tell its live viewers (the Redis event channel) and its webhook (the
outbox). Every place that changes a status calls this one function after committing; every place
that deletes a job calls `deleted`."""
from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from shared import events
from shared.models import Job
from shared.schemas import job_out
from shared.services import Services
from shared.webhooks import outbox

log = logging.getLogger(__name__)


def status_changed(services: Services, celery: Celery, job: Job) -> None:
    """Publish `job` (loaded with its snapshots) as it now is, and record and send the webhook event
    its status fires, if its webhook wants it. A webhook event the database cannot take now is
    recorded later by the outbox sweep, so that failure is logged, not raised."""
    events.publish(services.redis, job.id, "status", job_out(job).model_dump(mode="json"))
    if job.webhook_url is None:
        return
    try:
        outbox.notify(services, celery, job.id)
    except SQLAlchemyError as exc:
        log.warning("job %s: webhook event not recorded now (%s); the outbox sweep will", job.id, exc)


def deleted(services: Services, job_id: str) -> None:
    """Tell the job's live viewers it was deleted, after the commit: no status will end their streams."""
    events.publish(services.redis, job_id, "deleted", {"id": job_id})
