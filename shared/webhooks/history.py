"""What a job's deliveries look like to its owner (API) and to operators (admin dashboard),
and redelivery. A delivery is one event to the job's webhook, with every attempt at it.

For the dashboard: `deliveries_for(session, job_id)` and `redeliver(services, celery, delivery_id)`.
"""
from __future__ import annotations

from datetime import datetime

from celery import Celery
from pydantic import BaseModel, Field
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, selectinload

from shared.models import Job, WebhookEvent, WebhookStatus, utcnow
from shared.services import Services
from shared.webhooks import outbox


class AttemptOut(BaseModel):
    number: int
    started_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null if no response arrived.")
    error: str | None = Field(description="Why no acceptable response arrived (timeout, refused address, ...).")
    latency_ms: int
    response_excerpt: str | None = Field(description="The first KiB of the response body.")


class DeliveryOut(BaseModel):
    id: str = Field(description="Also the `webhook-id` header of every attempt.")
    job_id: str
    event: str
    url: str
    status: WebhookStatus
    created_at: datetime
    next_attempt_at: datetime | None
    attempts: list[AttemptOut]


class DeliveryList(BaseModel):
    data: list[DeliveryOut]


class InFlight(Exception):
    """An attempt at this delivery is under way; redeliver once it ended."""


def delivery_out(event: WebhookEvent) -> DeliveryOut:
    return DeliveryOut(
        id=event.id, job_id=event.job_id, event=event.type, url=event.url, status=WebhookStatus(event.status),
        created_at=event.created_at, next_attempt_at=event.next_attempt_at,
        attempts=[AttemptOut(number=a.number, started_at=a.started_at, status_code=a.status_code, error=a.error,
                             latency_ms=a.latency_ms, response_excerpt=a.response_excerpt) for a in event.attempt_log])


def deliveries_for(session: Session, job_id: str) -> list[WebhookEvent]:
    """A job's deliveries, oldest first, with their attempts loaded."""
    return list(session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)
                                .order_by(WebhookEvent.created_at, WebhookEvent.id)
                                .options(selectinload(WebhookEvent.attempt_log))))


def is_delivery_id(delivery_id: str) -> bool:
    """Whether `delivery_id` can be one, so that what cannot is no query (NUL breaks PostgreSQL text)."""
    return len(delivery_id) <= 64 and delivery_id.isprintable()


def find(session: Session, delivery_id: str, account_id: int | None = None) -> WebhookEvent | None:
    """The delivery, if it exists and (given an account) belongs to one of that account's jobs."""
    query = select(WebhookEvent).where(WebhookEvent.id == delivery_id).options(selectinload(WebhookEvent.attempt_log))
    if account_id is not None:
        query = query.join(Job, Job.id == WebhookEvent.job_id).where(Job.account_id == account_id)
    return session.scalar(query)


def redeliver(services: Services, celery: Celery, delivery_id: str, account_id: int | None = None) -> WebhookEvent | None:
    """Send the delivery again now, with the same `webhook-id` and body, whatever its status;
    a failure retries on the full schedule again. None if there is no such delivery (for that
    account); InFlight if an attempt holds it."""
    now = utcnow()
    with services.db.session() as session:
        if find(session, delivery_id, account_id) is None:
            return None
        rearmed = session.execute(
            update(WebhookEvent).where(WebhookEvent.id == delivery_id,
                                       or_(WebhookEvent.leased_until.is_(None), WebhookEvent.leased_until < now))
            .values(status=WebhookStatus.PENDING.value, failures=0, next_attempt_at=now)
            .execution_options(synchronize_session=False)).rowcount
        session.commit()
        if not rearmed:
            raise InFlight(delivery_id)
    outbox.dispatch(services, celery, delivery_id)
    with services.db.session() as session:
        return find(session, delivery_id)
