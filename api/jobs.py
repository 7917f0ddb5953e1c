"""`/v1/jobs`: submit, list, get, cancel and delete jobs, always within the caller's account."""
from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from datetime import datetime

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from api import services
from api.auth import account_id, api_key_id, require_key
from api.errors import ProblemError, invalid
from api.submission import Submission, idempotency_key, parse
from shared import events, jobs
from shared.models import ACTIVE, InputRole, Job, JobInput, JobStatus
from shared.schemas import JobList, job_out, job_path
from shared.storage import put_input
from shared.webhooks import outbox
from worker.broker import enqueue

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
require_key(bp)

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def load_job(session: Session, job_id: str) -> Job:
    """The caller's job or 404: another account's job does not exist as far as they can tell."""
    if not _is_job_id(job_id):  # no query for what cannot be an id (NUL bytes break PostgreSQL text)
        raise ProblemError(404, "Not Found", f"no job {job_id[:100]!r}")
    job = session.scalars(select(Job).where(Job.id == job_id, Job.account_id == account_id())
                          .options(joinedload(Job.snapshots))).unique().first()  # one query, snapshots joined
    if job is None:
        raise ProblemError(404, "Not Found", f"no job {job_id}")
    return job


def _is_job_id(job_id: str) -> bool:
    try:
        return str(uuid.UUID(job_id)) == job_id
    except ValueError:
        return False


def job_response(job: Job, status: int) -> Response:
    response = jsonify(job_out(job).model_dump(mode="json"))
    response.status_code = status
    return response


@bp.post("")
def submit() -> Response:
    svc = services()
    key = idempotency_key(request)
    submission = parse(request, svc.settings)
    with svc.db.session() as session:
        if key is not None and (existing := _replay(session, key, submission)) is not None:
            return existing
        _check_active(session, svc.settings)
        job = _create(session, key, submission)
        try:
            session.commit()
        except IntegrityError:  # a concurrent request with the same Idempotency-Key won
            session.rollback()
            if key is not None and (existing := _replay(session, key, submission)) is not None:
                return existing
            raise
        job = load_job(session, job.id)
    events.publish(svc.redis, job.id, "status", job_out(job).model_dump(mode="json"))
    enqueue(current_app.extensions["celery"], svc.db, job.id)
    response = job_response(job, 202)
    response.headers["Location"] = job_path(job.id)
    return response


def _check_active(session: Session, settings) -> None:
    """429 when this key, or its account, already has its maximum of queued + running jobs."""
    active = [s.value for s in ACTIVE]
    by_key, by_account = session.execute(  # both counts in one query over the account's active jobs
        select(func.coalesce(func.sum(case((Job.api_key_id == api_key_id(), 1), else_=0)), 0), func.count())
        .where(Job.account_id == account_id(), Job.status.in_(active))).one()
    for scope, count, limit in (("API key", by_key, settings.max_active_jobs_per_key),
                                ("account", by_account, settings.max_active_jobs)):
        if count >= limit:
            raise ProblemError(429, "Too Many Requests",
                               f"{count} jobs of this {scope} are queued or running; the limit is {limit}. "
                               "Retry after one of them ends", headers={"Retry-After": "30"})


def _replay(session: Session, key: str, submission: Submission) -> Response | None:
    job = session.scalar(select(Job).where(Job.account_id == account_id(), Job.idempotency_key == key)
                         .options(selectinload(Job.snapshots)))
    if job is None:
        return None
    if job.request_hash != submission.request_hash:
        raise invalid("Idempotency-Key", "was already used for a different request")
    response = job_response(job, 202)
    response.headers["Location"] = job_path(job.id)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _create(session: Session, key: str | None, submission: Submission) -> Job:
    storage = services().storage
    job = Job(account_id=account_id(), api_key_id=api_key_id(), params=submission.params, idempotency_key=key,
              request_hash=submission.request_hash, status=JobStatus.QUEUED.value, attempts=0,
              webhook_url=submission.webhook_url, webhook_events=submission.webhook_events)
    uploads = [(InputRole.CONTENT, submission.content), *((InputRole.STYLE, s) for s in submission.styles)]
    for position, (role, upload) in enumerate(uploads):
        digest = put_input(storage, upload.data)
        job.inputs.append(JobInput(position=position, role=role.value, sha256=digest, filename=upload.filename))
    session.add(job)
    return job


@bp.get("")
def list_jobs() -> Response:
    status = request.args.get("status")
    if status is not None and status not in {s.value for s in JobStatus}:
        raise invalid("status", f"must be one of {', '.join(s.value for s in JobStatus)}", status=400)
    limit = _limit(request.args.get("limit"))
    query = select(Job).where(Job.account_id == account_id())
    if status is not None:
        query = query.where(Job.status == status)
    if (cursor := request.args.get("cursor")) is not None:
        created_at, last_id = _decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < last_id)))
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1).options(selectinload(Job.snapshots))
    with services().db.session() as session:
        rows = list(session.scalars(query))
    page = rows[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
    return jsonify(JobList(data=[job_out(j) for j in page], next_cursor=next_cursor).model_dump(mode="json"))


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}", status=400)
    return int(raw)


def _encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.created_at.isoformat(), job.id]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created_at), str(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise invalid("cursor", "not a cursor this API returned", status=400) from None


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    with services().db.session() as session:
        return job_response(load_job(session, job_id), 200)


@bp.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    svc = services()
    with svc.db.session() as session:
        job = load_job(session, job_id)
        if job.state.terminal:
            raise ProblemError(409, "Conflict", f"job {job_id} already ended ({job.status}); nothing to cancel")
        status = jobs.cancel(session, job_id)
        session.expire_all()
        job = load_job(session, job_id)
    if status is JobStatus.CANCELED:
        events.publish(svc.redis, job_id, "status", job_out(job).model_dump(mode="json"))
        outbox.notify(svc, current_app.extensions["celery"], job_id)
    # 200: it is canceled; 202: a running job was asked to stop and will end `canceled` shortly
    return job_response(job, 200 if job.state.terminal else 202)


@bp.delete("/<job_id>")
def delete_job(job_id: str) -> Response:
    svc = services()
    with svc.db.session() as session:
        load_job(session, job_id)
        jobs.delete(session, svc.storage, job_id)
    return Response(status=204)
