"""A job's life in SQL: created in one place (within the active-job caps), then moved through its
states by transitions that are each one compare-and-set.

The row is the source of truth: a transition only happens if the row is still in the state
the caller saw (a `WHERE status = ...` or `WHERE lease_owner = ...` guard), so a duplicate
delivery, a second worker or a racing API request can never run or finish a job twice.

What is checked and then written runs under locks (`shared.db.lock`) held to the commit: the
account's lock around counting its active jobs and inserting a new one (concurrent submissions
cannot both pass the cap), and each input image's lock around "is it stored, is it still used"
and storing or deleting it (a delete never removes an image that a submission in flight is about
to use).
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete as sql_delete, func, or_, select, update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import lock
from shared.models import ACTIVE, InputRole, Job, JobInput, JobStatus, LossPoint, Snapshot, utcnow
from shared.storage import Storage, StorageError, input_key, job_prefix, put_input

log = logging.getLogger(__name__)
Q, R = JobStatus.QUEUED.value, JobStatus.RUNNING.value


class ErrorCode:
    """`error.code` values a failed job can carry."""

    ATTEMPTS_EXHAUSTED = "attempts_exhausted"   # claimed max_attempts times without finishing
    INPUT_MISSING = "input_missing"             # an input image vanished from storage
    INVALID_PARAMS = "invalid_params"           # the engine rejected the stored parameters
    DIVERGED = "diverged"                       # the loss became NaN or infinite
    OUT_OF_MEMORY = "out_of_memory"             # the device ran out of memory (the worker carries on)
    ENGINE_ERROR = "engine_error"               # anything else the engine raised
    STORAGE_ERROR = "storage_error"             # the result could not be written to storage


@dataclass(frozen=True)
class NewInput:
    role: InputRole
    sha256: str
    filename: str | None
    size: int | None
    data: bytes | None = None   # the uploaded bytes, stored unless already there; None: reuse a stored image


class InputGone(Exception):
    """An image to reuse (a retried job's input) is no longer stored."""


def account_lock(account_id: int) -> str:
    return f"account:{account_id}"


def input_lock(digest: str) -> str:
    return f"input:{digest}"


class TooManyActive(Exception):
    """The API key or the account already has its maximum of queued and running jobs."""

    def __init__(self, scope: str, count: int, limit: int) -> None:
        super().__init__(f"{count} jobs of this {scope} are queued or running; the limit is {limit}")
        self.scope, self.count, self.limit = scope, count, limit


def create(session: Session, settings: Settings, storage: Storage, *, account_id: int, api_key_id: int | None,
           params: dict[str, Any], inputs: list[NewInput], request_hash: str, idempotency_key: str | None = None,
           webhook_url: str | None = None, webhook_events: list[str] | None = None,
           prediction: dict[str, Any] | None = None, batch_key: str | None = None) -> Job:
    """A new queued job, added to the session, its input images in storage. The caller commits
    (ending the locks taken here), then enqueues it. Raises TooManyActive past
    `max_active_jobs_per_key` or `max_active_jobs` (per account), InputGone for an image to reuse
    that is no longer stored."""
    lock(session, account_lock(account_id), *(input_lock(i.sha256) for i in inputs))
    by_key, by_account = session.execute(  # both counts in one query over the account's active jobs
        select(func.coalesce(func.sum(case((Job.api_key_id == api_key_id, 1), else_=0)), 0), func.count())
        .where(Job.account_id == account_id, Job.status.in_([s.value for s in ACTIVE]))).one()
    for scope, count, limit in (("API key", by_key, settings.max_active_jobs_per_key),
                                ("account", by_account, settings.max_active_jobs)):
        if count >= limit:
            raise TooManyActive(scope, count, limit)
    for i in inputs:  # images are stored only once the caps allow the job
        if i.data is not None:
            put_input(storage, i.data)
        elif not storage.exists(input_key(i.sha256)):
            raise InputGone(f"the {i.role.value} image {i.sha256[:12]}… is no longer stored")
    job = Job(account_id=account_id, api_key_id=api_key_id, params=params, idempotency_key=idempotency_key,
              request_hash=request_hash, status=JobStatus.QUEUED.value, attempts=0,
              webhook_url=webhook_url, webhook_events=webhook_events, prediction=prediction,
              batch_key=batch_key,
              inputs=[JobInput(position=position, role=i.role.value, sha256=i.sha256, filename=i.filename,
                               size_bytes=i.size) for position, i in enumerate(inputs)])
    session.add(job)
    return job


def lease_owner(claim_id: str) -> str:
    """A claim's `lease_owner`: the worker process that holds it (host:pid), and the claim's own id."""
    return f"{socket.gethostname()}:{os.getpid()}:{claim_id}"


def owner_process(owner: str) -> str:
    """The worker process of a `lease_owner`: the jobs of a batch share it, each with a claim of its own."""
    return owner.rsplit(":", 1)[0]


def claim(session: Session, job_id: str, owner: str, lease_seconds: float, max_attempts: int) -> bool:
    """Take a queued job, or a running one whose lease expired, if attempts remain."""
    now = utcnow()
    claimable = or_(Job.status == Q, and_(Job.status == R, Job.lease_expires_at < now))
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.attempts < max_attempts, Job.cancel_requested_at.is_(None))
        .values(status=R, lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def batch_candidates(session: Session, job_id: str, batch_key: str, limit: int, max_attempts: int) -> list[str]:
    """Up to `limit` other queued jobs of `batch_key`, oldest first, that a worker running `job_id`
    may claim (each with `claim`, which a concurrent worker may win) to run with it as one batch.
    Jobs with a checkpoint resume alone."""
    return list(session.scalars(
        select(Job.id).where(Job.status == Q, Job.batch_key == batch_key, Job.id != job_id,
                             Job.checkpoint_key.is_(None), Job.cancel_requested_at.is_(None),
                             Job.attempts < max_attempts)
        .order_by(Job.created_at, Job.id).limit(limit)))


def renew(session: Session, job_id: str, owner: str, lease_seconds: float,
          progress: dict[str, Any] | None = None) -> datetime | None | bool:
    """Extend our lease (and write progress, adding its losses to the job's loss history).
    Returns False if the lease is no longer ours
    (the job was deleted or reclaimed), else the job's cancel_requested_at (None: carry on)."""
    values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_seconds)}
    if progress is not None:
        values["progress"] = progress
    row = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == R)
        .values(**values).returning(Job.cancel_requested_at)
        .execution_options(synchronize_session=False)
    ).first()
    if row is not None and progress is not None:
        session.add(LossPoint(job_id=job_id, iteration=progress["iteration"], losses=progress["losses"]))
    session.commit()
    return False if row is None else row[0]


def add_snapshot(session: Session, owner: str, lease_seconds: float, snapshot: Snapshot) -> list[str] | None:
    """Record a snapshot of a running job we hold, in place of any of the same iteration (an
    earlier claim's, redone after a resume); the keys of the files it replaced, for the caller to
    delete. None, and nothing written, if the job is no longer ours. The guard is the lease's
    renewal, so the row stays ours until the commit."""
    held = session.execute(
        update(Job).where(Job.id == snapshot.job_id, Job.lease_owner == owner, Job.status == R)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    ).rowcount
    if not held:
        session.rollback()
        return None
    same = (Snapshot.job_id == snapshot.job_id, Snapshot.iteration == snapshot.iteration)
    replaced = list(session.scalars(select(Snapshot.key).where(*same)))
    session.execute(sql_delete(Snapshot).where(*same))
    session.add(snapshot)
    session.commit()
    return replaced


def finish(session: Session, job_id: str, owner: str, status: JobStatus, **values: Any) -> bool:
    """End a running job we hold the lease of; False if it is no longer ours."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == R)
        .values(status=status.value, finished_at=utcnow(), lease_owner=None, lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def release(session: Session, job_id: str, owner: str, checkpoint_key: str | None) -> bool:
    """Hand a running job we hold back to the queue (its worker is shutting down). The claim is
    refunded: a graceful hand-back is not a failed attempt. False if it is no longer ours."""
    values: dict[str, Any] = {"status": Q, "lease_owner": None, "lease_expires_at": None, "enqueued_at": None,
                              "attempts": Job.attempts - 1}
    if checkpoint_key is not None:
        values["checkpoint_key"] = checkpoint_key
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == R, Job.cancel_requested_at.is_(None))
        .values(**values).execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def fail_exhausted(session: Session, job_id: str, max_attempts: int) -> bool:
    """Fail a job that was claimed `max_attempts` times and is not running under a live lease."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts >= max_attempts,
               or_(Job.status == Q, and_(Job.status == R, Job.lease_expires_at < now)))
        .values(status=JobStatus.FAILED.value, finished_at=now, lease_owner=None, lease_expires_at=None,
                error_code=ErrorCode.ATTEMPTS_EXHAUSTED,
                error_message=f"the job did not finish in {max_attempts} attempts (worker lost or lease expired)")
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def cancel_abandoned(session: Session, job_id: str) -> bool:
    """End a job that was asked to stop but whose worker vanished (lease expired): it cannot stop itself."""
    now = utcnow()
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status == R, Job.cancel_requested_at.is_not(None), Job.lease_expires_at < now)
        .values(status=JobStatus.CANCELED.value, finished_at=now, lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def cancel(session: Session, job_id: str) -> JobStatus:
    """Cancel a queued job at once; ask a running one to stop. Returns the status after the call."""
    now = utcnow()
    done = session.execute(
        update(Job).where(Job.id == job_id, Job.status == Q)
        .values(status=JobStatus.CANCELED.value, finished_at=now, cancel_requested_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not done:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == R, Job.cancel_requested_at.is_(None))
            .values(cancel_requested_at=now).execution_options(synchronize_session=False)
        )
    session.commit()
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return JobStatus(status)


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow())
                    .execution_options(synchronize_session=False))
    session.commit()


def delete(session: Session, storage: Storage, job_id: str) -> None:
    """Delete a job with its rows and files, and its input images unless another job uses them.
    A running job is asked to stop too: its worker sees the row gone (or the flag) and stops."""
    if session.scalar(select(Job.status).where(Job.id == job_id)) == R:
        cancel(session, job_id)
    digests = set(session.scalars(select(JobInput.sha256).where(JobInput.job_id == job_id)))
    lock(session, *map(input_lock, digests))
    session.execute(sql_delete(Job).where(Job.id == job_id))
    delete_unused_inputs(session, storage, digests)
    session.commit()
    try:
        storage.delete_prefix(job_prefix(job_id))
    except StorageError as exc:  # the job is gone; say exactly what is left to remove by hand
        log.error("job %s deleted, but its files under %s could not be removed: %s", job_id, job_prefix(job_id), exc)


def delete_unused_inputs(session: Session, storage: Storage, digests: set[str]) -> None:
    """Remove from storage those of `digests` that no job with its files (in this transaction's
    view) still uses. Under their input locks (`input_lock`), so no submission in flight starts to
    use one meanwhile; the caller commits after."""
    still_used = set(session.scalars(select(JobInput.sha256).join(Job, Job.id == JobInput.job_id)
                                     .where(JobInput.sha256.in_(digests), Job.data_removed_at.is_(None))))
    for digest in digests - still_used:
        storage.delete(input_key(digest))
