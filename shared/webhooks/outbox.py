"""The outbox: a job's webhook events are rows in SQL before they are messages in the broker.

`notify` commits the event, then asks the broker to deliver it. If the broker is down the row
stays due, and `sweep` (run periodically) sends every due event that no attempt holds, so an
event that happened during a Redis or worker outage goes out when they return. The sweep also
records the terminal event of a job that ended without one (its process died between the two
commits).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Literal, get_args

from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import BaseModel, Field
from redis import RedisError
from sqlalchemy import literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from shared.models import TERMINAL, Job, JobStatus, WebhookEvent, WebhookStatus, utcnow
from shared.schemas import JobOut, job_out
from shared.services import Services
from shared.broker import DELIVER_WEBHOOK, MAINTENANCE_QUEUE

log = logging.getLogger(__name__)

EventType = Literal["job.started", "job.snapshot", "job.succeeded", "job.failed", "job.canceled"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
STARTED, SNAPSHOT = EVENT_TYPES[:2]
DEFAULT_EVENTS = EVENT_TYPES[2:]  # the terminal ones
SNAPSHOT_INTERVAL = timedelta(seconds=1)   # at most one job.snapshot per job per second
MAX_PAYLOAD_BYTES = 20_000
RECORD_MISSED_AFTER = timedelta(minutes=1)  # `notify` follows a job's end within milliseconds
RECORD_MISSED_WITHIN = timedelta(days=1)    # how far back the sweep looks for ended jobs


def event_type_for(status: JobStatus) -> str | None:
    """The event a job entering `status` fires; None for `queued`."""
    return {JobStatus.RUNNING: STARTED}.get(status, f"job.{status.value}" if status.terminal else None)


class WebhookPayload(BaseModel):
    """The body of every delivery."""

    type: EventType
    timestamp: datetime = Field(description="When the event happened (UTC).")
    data: JobOut = Field(description="The job, as `GET /v1/jobs/{id}` showed it then.")


def payload(event_type: str, job: Job) -> str:
    """The body: type, timestamp and the job as `GET /v1/jobs/{id}` shows it. Past
    MAX_PAYLOAD_BYTES only the newest snapshots are listed (the job URL has them all)."""
    body = WebhookPayload(type=event_type, timestamp=utcnow(), data=job_out(job))
    text = body.model_dump_json()
    while len(text.encode()) > MAX_PAYLOAD_BYTES and body.data.snapshots:
        snapshots = body.data.snapshots
        body.data.snapshots = snapshots[len(snapshots) - len(snapshots) // 2:]  # the newer half
        text = body.model_dump_json()
    return text


def record(session: Session, job: Job, event_type: str) -> WebhookEvent | None:
    """Commit the event if the job's webhook wants it: `job.snapshot` at most once a second, every
    other type once per job (a unique index, so two recorders racing make one row). Returns None
    when nothing was recorded."""
    if job.webhook_url is None or event_type not in (job.webhook_events or ()):
        return None
    if event_type == SNAPSHOT and session.scalar(
            select(WebhookEvent.id).where(WebhookEvent.job_id == job.id, WebhookEvent.type == SNAPSHOT,
                                          WebhookEvent.created_at > utcnow() - SNAPSHOT_INTERVAL).limit(1)) is not None:
        return None
    event = WebhookEvent(job_id=job.id, type=event_type, url=job.webhook_url, payload=payload(event_type, job),
                         next_attempt_at=utcnow())
    session.add(event)
    try:
        session.commit()
    except IntegrityError:  # recorded already (or the job was deleted meanwhile)
        session.rollback()
        return None
    return event


def notify(services: Services, celery: Celery, job_id: str, event_type: str | None = None) -> None:
    """Record and send the job's webhook event: `event_type`, or by default the one its status implies."""
    with services.db.session() as session:
        row = session.execute(select(Job.status, Job.webhook_events).where(Job.id == job_id)).first()
        event_type = event_type or (event_type_for(JobStatus(row.status)) if row else None)
        if row is None or event_type not in (row.webhook_events or ()):
            return  # the common case, checked without loading the job: no webhook, or not this event
        job = session.scalar(select(Job).where(Job.id == job_id).options(selectinload(Job.snapshots)))
        event = record(session, job, event_type) if job is not None else None  # None: deleted meanwhile
    if event is not None:
        dispatch(services, celery, event.id)


def dispatch(services: Services, celery: Celery, event_id: str, at: datetime | None = None) -> bool:
    """Ask the broker to attempt the event (at `at`, by default now). On failure the sweep will."""
    now = utcnow()
    at = at or now
    try:
        celery.send_task(DELIVER_WEBHOOK, args=[event_id], queue=MAINTENANCE_QUEUE,
                         countdown=max(0.0, (at - now).total_seconds()))
    except (OperationalError, RedisError, OSError) as exc:
        log.warning("webhook event %s is recorded but not yet sent to the broker (%s); the sweep will", event_id, exc)
        return False
    with services.db.session() as session:
        session.execute(update(WebhookEvent).where(WebhookEvent.id == event_id).values(dispatched_at=at)
                        .execution_options(synchronize_session=False))
        session.commit()
    return True


def sweep(services: Services, celery: Celery) -> list[str]:
    """Record missed terminal events, then send every due, pending event no attempt holds,
    unless a message for it is on its way (dispatched for its current due time, within
    `enqueue_grace_seconds`). Returns the ids sent."""
    grace = timedelta(seconds=services.settings.enqueue_grace_seconds)
    E = WebhookEvent
    with services.db.session() as session:
        for job in _ended_without_event(session, utcnow()):
            record(session, job, event_type_for(job.state))
        now = utcnow()
        due = list(session.scalars(select(E.id).where(
            E.status == WebhookStatus.PENDING.value, E.next_attempt_at <= now,
            or_(E.leased_until.is_(None), E.leased_until < now),
            or_(E.dispatched_at.is_(None), E.dispatched_at < E.next_attempt_at, E.dispatched_at < now - grace))))
    sent = [event_id for event_id in due if dispatch(services, celery, event_id)]
    if sent:
        log.info("webhook sweep: sent %s", sent)
    return sent


def _ended_without_event(session: Session, now: datetime) -> list[Job]:
    """Jobs that ended lately with a webhook and have no event recorded for their end
    (`record` then skips those not subscribed to it)."""
    recorded = select(WebhookEvent.id).where(WebhookEvent.job_id == Job.id,
                                             WebhookEvent.type == literal("job.") + Job.status).exists()
    return list(session.scalars(select(Job).where(
        Job.webhook_url.is_not(None), Job.status.in_([s.value for s in TERMINAL]),
        Job.finished_at < now - RECORD_MISSED_AFTER, Job.finished_at > now - RECORD_MISSED_WITHIN, ~recorded)
        .options(selectinload(Job.snapshots))))
