"""`load_job`: the caller's job by id, or 404, for every route under `/v1/jobs/{id}`; `find_job`
for a job of the caller's that may have been deleted meanwhile."""
from __future__ import annotations

import uuid

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, joinedload

from api.auth import account_id
from api.errors import ProblemError
from shared.models import Job


# every poll runs this: built once, so its SQL and cache key are too; one query, snapshots joined
LOAD_JOB = select(Job).where(Job.id == bindparam("job_id"), Job.account_id == bindparam("account_id")) \
    .options(joinedload(Job.snapshots))


def load_job(session: Session, job_id: str) -> Job:
    """The caller's job or 404: another account's job does not exist as far as they can tell."""
    if not is_job_id(job_id):  # no query for what cannot be an id (NUL bytes break PostgreSQL text)
        raise ProblemError(404, "Not Found", f"no job {job_id[:100]!r}")
    job = find_job(session, job_id)
    if job is None:
        raise ProblemError(404, "Not Found", f"no job {job_id}")
    return job


def find_job(session: Session, job_id: str) -> Job | None:
    """The caller's job by an id the API wrote, or None if there is none (any more)."""
    return session.scalars(LOAD_JOB, {"job_id": job_id, "account_id": account_id()}).unique().first()


def is_job_id(job_id: str) -> bool:
    """Whether `job_id` is a job id as the API writes them (a canonical UUID)."""
    try:
        return str(uuid.UUID(job_id)) == job_id
    except ValueError:
        return False
