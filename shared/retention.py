"""Retention: the files of a job that ended long enough ago are removed; its row stays.

How long is the account's `retention_days`, else the server's `ATELIER_RETENTION_DAYS` (0: for
ever). Removing a job's files deletes its result, snapshots and checkpoint, then, in one
transaction, marks the job (`data_removed_at`; the API shows `data_removed: true` and no result
or snapshots, as Replicate does), drops its snapshot rows, and deletes the input images that no
job with files still uses (under their locks, as `shared.lifecycle.delete` does). Files go
first: a sweep that dies half-way leaves a job whose files are partly gone but not yet marked,
and the next sweep finishes it; the reverse would leave files nobody will ever remove.

The sweep clears at most `retention_batch_size` jobs a run, oldest first; the maintenance task
sends the next batch at once while batches come back full, so a backlog drains in bounded
transactions without holding up the other maintenance work.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, false, or_, select, update
from sqlalchemy.orm import Session

from shared.db import lock
from shared.lifecycle import delete_unused_inputs, input_lock
from shared.models import TERMINAL, Account, Job, JobInput, Snapshot, utcnow
from shared.services import Services
from shared.storage import job_prefix

log = logging.getLogger(__name__)


def expired(session: Session, default_days: float, now: datetime) -> ColumnElement[bool]:
    """Jobs whose files are due for removal: ended more than their account's retention ago."""
    overrides: dict[float, list[int]] = defaultdict(list)
    for account_id, days in session.execute(select(Account.id, Account.retention_days)
                                            .where(Account.retention_days.is_not(None))):
        overrides[days].append(account_id)
    overridden = [account_id for ids in overrides.values() for account_id in ids]
    due = [and_(Job.account_id.in_(ids), Job.finished_at < now - timedelta(days=days))
           for days, ids in overrides.items() if days > 0]
    if default_days > 0:
        due.append(and_(Job.account_id.not_in(overridden), Job.finished_at < now - timedelta(days=default_days)))
    return and_(Job.status.in_([s.value for s in TERMINAL]), Job.data_removed_at.is_(None), or_(false(), *due))


def set_days(session: Session, account_id: int, days: float | None) -> str | None:
    """Set an account's retention (None: the server's default); its name, or None if there is no such account."""
    name = session.scalar(select(Account.name).where(Account.id == account_id))
    if name is not None:
        session.execute(update(Account).where(Account.id == account_id).values(retention_days=days))
        session.commit()
    return name


def sweep(services: Services) -> list[str]:
    """Remove the files of up to `retention_batch_size` expired jobs, oldest first; their ids."""
    settings = services.settings
    with services.db.session() as session:
        due = list(session.scalars(select(Job.id).where(expired(session, settings.retention_days, utcnow()))
                                   .order_by(Job.finished_at).limit(settings.retention_batch_size)))
    removed = [job_id for job_id in due if remove_files(services, job_id)]
    if removed:
        log.info("retention: removed the files of %d job(s)", len(removed))
    return removed


def remove_files(services: Services, job_id: str) -> bool:
    """Remove an ended job's files and mark it; False if it is gone, has not ended, or its files
    were removed already."""
    ended = and_(Job.id == job_id, Job.status.in_([s.value for s in TERMINAL]), Job.data_removed_at.is_(None))
    with services.db.session() as session:
        if session.scalar(select(Job.id).where(ended)) is None:
            return False
    services.storage.delete_prefix(job_prefix(job_id))  # an ended job's files change no more
    with services.db.session() as session:
        digests = set(session.scalars(select(JobInput.sha256).where(JobInput.job_id == job_id)))
        lock(session, *map(input_lock, digests))
        marked = session.execute(
            update(Job).where(ended)
            .values(data_removed_at=utcnow(), result_key=None, result_bytes=None, checkpoint_key=None,
                    checkpoint_bytes=None)
            .execution_options(synchronize_session=False)).rowcount
        if not marked:
            session.rollback()
            return False
        session.execute(delete(Snapshot).where(Snapshot.job_id == job_id))
        delete_unused_inputs(session, services.storage, digests)
        session.commit()
    return True
