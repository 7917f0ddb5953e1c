"""`/v1/jobs`: submit, list, get, cancel and delete jobs, always within the caller's account."""
from __future__ import annotations

import base64
import binascii
import json
import logging
from datetime import datetime, timezone

from flask import Blueprint, Response, current_app, request
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from api import events
from api.app import services
from api.auth import account_id, api_key_id, require_key
from api.errors import ProblemError, invalid
from api.lookup import find_job, is_job_id, load_job
from api.queue_standing import standing, standings
from api.submission import Submission, idempotency_key, parse, predict, prefer_wait
from shared import announce, lifecycle
from shared.broker import enqueue
from shared.models import InputRole, Job, JobStatus
from shared.params import batch_key
from shared.schemas import JobList, engine_params, job_out, job_path
from shared.storage import sha256

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
require_key(bp)

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def job_response(session: Session, job: Job, status: int) -> Response:
    """The job as JSON, with where it stands if it is queued."""
    queue = standing(session, services().redis, job)
    return Response(job_out(job, queue).model_dump_json(), status=status, mimetype="application/json")


@bp.post("")
def submit() -> Response:
    """202 with the queued job; with `Prefer: wait=N`, 201 once it has ended if it does within N
    seconds (the job was created and is complete, as Replicate answers), else 202 as usual: as
    created, if it was deleted meanwhile (it was created; its Location now answers 404)."""
    svc = services()
    celery = current_app.extensions["celery"]
    key = idempotency_key(request)
    wait = prefer_wait(request, svc.settings)
    submission = parse(request, svc.settings)
    with svc.db.session() as session:
        job = _replay(session, key, submission)
        replayed = job is not None
        if not replayed:
            job = _create(session, key, submission)
            try:
                session.commit()
            except IntegrityError:  # a concurrent request with the same Idempotency-Key won
                session.rollback()
                if (job := _replay(session, key, submission)) is None:
                    raise
                replayed = True
        job_id = job.id
        response = job_response(session, load_job(session, job_id), 202)
    if not replayed:
        enqueue(celery, svc.db, job_id)  # a new job has no viewers and no webhook event yet: nothing to announce
    if wait is not None:
        events.wait_for_end(job_id, wait)
        with svc.db.session() as session:
            if (job := find_job(session, job_id)) is not None:
                response = job_response(session, job, 201 if job.state.terminal else 202)
    response.headers["Location"] = job_path(job_id)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if wait is not None:
        response.headers["Preference-Applied"] = f"wait={wait}"
    return response


def _create(session: Session, key: str | None, submission: Submission) -> Job:
    """The job (429 past the active-job caps, 422 if it fits on no live worker's device), its
    images stored once the caps allow it."""
    svc = services()
    prediction = predict(submission, svc.redis)
    uploads = [(InputRole.CONTENT, submission.content), *((InputRole.STYLE, s) for s in submission.styles)]
    try:
        return lifecycle.create(
            session, svc.settings, svc.storage, account_id=account_id(), api_key_id=api_key_id(),
            params=submission.params,
            inputs=[lifecycle.NewInput(role, sha256(u.data), u.filename, len(u.data), u.data) for role, u in uploads],
            request_hash=submission.request_hash, idempotency_key=key, prediction=prediction,
            batch_key=batch_key(engine_params(submission.params), submission.content.size),
            webhook_url=submission.webhook_url, webhook_events=submission.webhook_events)
    except lifecycle.TooManyActive as exc:
        raise ProblemError(429, "Too Many Requests", f"{exc}. Retry after one of them ends",
                           headers={"Retry-After": "30"}) from None


def _replay(session: Session, key: str | None, submission: Submission) -> Job | None:
    """The job an earlier request with this Idempotency-Key made (422 if its body differed)."""
    if key is None:
        return None
    job = session.scalar(select(Job).where(Job.account_id == account_id(), Job.idempotency_key == key))
    if job is not None and job.request_hash != submission.request_hash:
        raise invalid("Idempotency-Key", "was already used for a different request")
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
        queue = standings(session, services().redis, page)
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
    return Response(JobList(data=[job_out(j, queue.get(j.id)) for j in page], next_cursor=next_cursor)
                    .model_dump_json(), mimetype="application/json")


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}", status=400)
    return int(raw)


def _encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.created_at.isoformat(), job.id]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor of `_encode_cursor` holds; 400 for anything else, an edited
    one too (a date without its zone, or out of range in UTC; an id that is not a job id)."""
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        created_at = datetime.fromisoformat(created_at)
        if created_at.tzinfo is not None and isinstance(job_id, str) and is_job_id(job_id):
            return created_at.astimezone(timezone.utc), job_id
    except (ValueError, TypeError, OverflowError, binascii.Error):
        pass
    raise invalid("cursor", "not a cursor this API returned", status=400)


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    with services().db.session() as session:
        return job_response(session, load_job(session, job_id), 200)


@bp.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    svc = services()
    with svc.db.session() as session:
        job = load_job(session, job_id)
        if job.state.terminal:
            raise ProblemError(409, "Conflict", f"job {job_id} already ended ({job.status}); nothing to cancel")
        status = lifecycle.cancel(session, job_id)
        session.expire_all()
        job = load_job(session, job_id)
        # 200: it is canceled; 202: a running job was asked to stop and will end `canceled` shortly
        response = job_response(session, job, 200 if job.state.terminal else 202)
    if status is JobStatus.CANCELED:
        announce.status_changed(svc, current_app.extensions["celery"], job)
    return response


@bp.delete("/<job_id>")
def delete_job(job_id: str) -> Response:
    svc = services()
    with svc.db.session() as session:
        load_job(session, job_id)
        lifecycle.delete(session, svc.storage, job_id)
    announce.deleted(svc, job_id)
    return Response(status=204)
