"""The periodic sweep: the safety net for messages the broker never got or a worker never finished.

- a queued job never handed to the broker (the API committed it, then the broker was down)
  or handed over so long ago that the message must be lost: sent again;
- a running job whose lease expired (its worker died or hung): sent again, to be resumed
  from its checkpoint by whichever worker claims it, unless it used all its attempts (failed)
  or was being canceled (canceled);
- the device reports of workers not alive for a day: forgotten (`shared.devices.prune`).

Sending a job twice is harmless: the claim in SQL lets exactly one delivery run it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from celery import Celery
from redis import RedisError
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import selectinload

from shared import announce, devices, lifecycle
from shared.broker import enqueue
from shared.models import Job, JobStatus, utcnow
from shared.services import Services

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    resent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)  # worker nodes


def sweep(services: Services, celery: Celery) -> SweepReport:
    settings, report = services.settings, SweepReport()
    now = utcnow()
    never_sent = and_(Job.enqueued_at.is_(None), Job.created_at < now - timedelta(seconds=settings.enqueue_grace_seconds))
    message_lost = Job.enqueued_at < now - timedelta(seconds=settings.visibility_timeout)
    expired = and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
    with services.db.session() as session:
        queued = list(session.scalars(select(Job.id).where(
            Job.status == JobStatus.QUEUED.value, or_(never_sent, message_lost))))
        stale = session.execute(select(Job.id, Job.attempts, Job.cancel_requested_at, Job.enqueued_at,
                                       Job.lease_expires_at).where(expired)).all()
        for job_id, attempts, cancel_requested_at, enqueued_at, lease_expires_at in stale:
            if cancel_requested_at is not None:
                if lifecycle.cancel_abandoned(session, job_id):
                    report.canceled.append(job_id)
            elif attempts >= settings.max_attempts:
                if lifecycle.fail_exhausted(session, job_id, settings.max_attempts):
                    report.failed.append(job_id)
            elif enqueued_at is None or enqueued_at < lease_expires_at or enqueued_at < now - timedelta(seconds=settings.visibility_timeout):
                queued.append(job_id)  # not yet re-sent since its lease expired
    for job_id in queued:
        if enqueue(celery, services.db, job_id):
            report.resent.append(job_id)
    for job_id in report.failed + report.canceled:
        with services.db.session() as session:
            job = session.get(Job, job_id, options=[selectinload(Job.snapshots)])
        announce.status_changed(services, celery, job)
    try:
        report.forgotten = devices.prune(services.redis)
    except RedisError as exc:  # the jobs' part is done; the next sweep prunes
        log.warning("sweep: could not prune the workers' device reports: %s", exc)
    if report.resent or report.failed or report.canceled or report.forgotten:
        log.info("sweep: resent %s, failed %s, canceled %s; forgot the devices of %s", report.resent, report.failed,
                 report.canceled, report.forgotten)
    return report

