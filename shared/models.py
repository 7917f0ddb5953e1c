"""SQLAlchemy 2.0 models: the service's whole state lives here, not in the broker.

Tenancy: an `Account` owns jobs; it can hold several `ApiKey`s (so keys rotate without
losing jobs). Every query the API makes goes through the caller's account id.
"""
from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text, TypeDecorator,
                        UniqueConstraint, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite keeps no zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use shared.models.utcnow()")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # days a job's files are kept after it ended (0: for ever); None: the server's ATELIER_RETENTION_DAYS
    retention_days: Mapped[float | None] = mapped_column(Float)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="account")


class ApiKey(Base):
    """Only the sha256 of a key is stored; `prefix` lets a human tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    # Standard Webhooks signing secrets (`whsec_...`). Stored as is, not hashed: we need them to sign.
    # After a rotation the previous secret signs too, until `previous_webhook_secret_expires_at`.
    webhook_secret: Mapped[str | None] = mapped_column(String(64))
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(64))
    previous_webhook_secret_expires_at: Mapped[datetime | None]

    account: Mapped[Account] = relationship(back_populates="keys")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # the list endpoint: one account's jobs, newest first, keyset-paginated
        Index("ix_jobs_account_created", "account_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_retention", "data_removed_at", "finished_at"),  # the retention sweep: kept files, oldest first
        Index("ix_jobs_batch", "status", "batch_key"),  # a worker's companions: queued jobs of its job's shape
        UniqueConstraint("account_id", "idempotency_key", name="uq_jobs_account_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    params: Mapped[dict[str, Any]]                     # effective parameters, defaults filled in
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))  # inputs + params, to spot a reused Idempotency-Key
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]               # set once the broker accepted the message
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # the claim: who runs it, until when, how many times it was claimed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    progress: Mapped[dict[str, Any] | None]
    checkpoint_key: Mapped[str | None] = mapped_column(String(255))
    checkpoint_bytes: Mapped[int | None] = mapped_column(BigInteger)
    result_key: Mapped[str | None] = mapped_column(String(255))
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    result_bytes: Mapped[int | None] = mapped_column(BigInteger)
    result_width: Mapped[int | None]
    result_height: Mapped[int | None]
    result_quality: Mapped[dict[str, Any] | None]
    # how the attempt that finished it ran (worker, device, precision, seconds, peak memory, batch),
    # to set against its prediction; None for jobs finished before it was recorded
    result_run: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # where to POST this job's events (shared.webhooks), and which ones; None: no webhook
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    # when the retention sweep removed its files (result, snapshots, checkpoint); the row stays
    data_removed_at: Mapped[datetime | None]
    # the key that submitted it, for per-key job counts. No foreign key: keys are revoked, never
    # deleted, and SQLite cannot add one to an existing table without rebuilding it
    api_key_id: Mapped[int | None] = mapped_column(index=True)
    # the run time and peak memory predicted at submission (shared.capacity.Prediction.to_dict)
    prediction: Mapped[dict[str, Any] | None]
    # jobs of one key can run as one batch (shared.params.batch_key); None: alone
    batch_key: Mapped[str | None] = mapped_column(String(32))

    inputs: Mapped[list[JobInput]] = relationship(
        back_populates="job", order_by="JobInput.position", cascade="all, delete-orphan", passive_deletes=True)
    snapshots: Mapped[list[Snapshot]] = relationship(
        back_populates="job", order_by="Snapshot.iteration", cascade="all, delete-orphan", passive_deletes=True)

    @property
    def state(self) -> JobStatus:
        return JobStatus(self.status)


class InputRole(str, enum.Enum):
    CONTENT = "content"
    STYLE = "style"


class JobInput(Base):
    """An uploaded image of a job; the bytes are content-addressed in storage (`sha256`)."""

    __tablename__ = "job_inputs"
    __table_args__ = (UniqueConstraint("job_id", "position", name="uq_job_inputs_job_position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int]                               # 0 is the content image, then the styles in order
    role: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)   # None: stored before sizes were recorded

    job: Mapped[Job] = relationship(back_populates="inputs")


class Snapshot(Base):
    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("job_id", "iteration", name="uq_snapshots_job_iteration"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)   # None: stored before sizes were recorded

    job: Mapped[Job] = relationship(back_populates="snapshots")


class LossPoint(Base):
    """The losses at one progress write of a running job: the history the dashboard charts."""

    __tablename__ = "loss_points"
    __table_args__ = (Index("ix_loss_points_job_iteration", "job_id", "iteration"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    losses: Mapped[dict[str, Any]]


class Operator(Base):
    """A person who signs in to the admin dashboard; only a salted password hash is kept."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime | None]


class WebhookStatus(str, enum.Enum):
    PENDING = "pending"        # an attempt is due now or at `next_attempt_at`
    DELIVERED = "delivered"    # a 2xx arrived
    FAILED = "failed"          # retries exhausted, or the receiver answered 410 Gone


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class WebhookEvent(Base):
    """One event of a job for its webhook: the outbox row, committed before any attempt is made.

    Its id is the `webhook-id` header of every attempt, and `payload` the exact body each one
    signs and sends. A due, pending event that nobody holds (`leased_until`) is sent again by
    the sweep, so an event survives a broker or worker outage.
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_job_created", "job_id", "created_at"),
        Index("ix_webhook_events_status_next", "status", "next_attempt_at"),
        # job.started and the terminal events happen once per job (revision 0007)
        Index("uq_webhook_events_job_type_once", "job_id", "type", unique=True,
              sqlite_where=text("type != 'job.snapshot'"), postgresql_where=text("type != 'job.snapshot'")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_message_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=WebhookStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)   # made so far, redeliveries included
    failures: Mapped[int] = mapped_column(Integer, default=0)   # since the last success or redelivery: the retry index
    next_attempt_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]  # when the newest broker message for it is due to run
    leased_until: Mapped[datetime | None]   # an attempt is in flight until then

    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        back_populates="event", order_by="WebhookAttempt.number", cascade="all, delete-orphan", passive_deletes=True)


class WebhookAttempt(Base):
    """One HTTP attempt at delivering an event, whatever its outcome."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("event_id", "number", name="uq_webhook_attempts_event_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    number: Mapped[int]
    url: Mapped[str] = mapped_column(String(2048))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(500))
    latency_ms: Mapped[int]
    response_excerpt: Mapped[str | None] = mapped_column(Text)

    event: Mapped[WebhookEvent] = relationship(back_populates="attempt_log")
