"""The Jobs list (all tenants), a job's page, its images and webhook deliveries, and the cancel /
retry / delete / redeliver actions."""
from __future__ import annotations

import io
import math

from flask import Response, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from api.app import services
from api.admin.blueprint import bp
from api.admin.views import job_row, job_state
from api.lookup import is_job_id
from api.queue_standing import standing, standings
from api.files import image_response
from shared import announce, lifecycle
from shared.broker import enqueue
from shared.images import ImageError, open_image
from shared.models import Account, ApiKey, InputRole, Job, JobInput, JobStatus, LossPoint, Snapshot
from shared.storage import StorageKeyError, input_key
from shared.webhooks import history

PAGE_SIZE = 25
MAX_PAGE = 100_000
THUMBNAIL_SIDE = 240
STATUSES = [s.value for s in JobStatus]


def _filters() -> tuple[str, str, str, int]:
    status = request.args.get("status", "")
    if status and status not in STATUSES:
        abort(400, f"status must be one of {', '.join(STATUSES)}")
    page = request.args.get("page", "1")
    if not (page.isascii() and page.isdigit()) or not 1 <= int(page) <= MAX_PAGE:
        abort(400, f"page must be an integer from 1 to {MAX_PAGE}")
    return status, _text("owner"), _text("q").strip().lower(), int(page)  # owner: a name exactly, spaces and all


def _text(name: str) -> str:
    """A text filter; NUL, which no account name or job id holds (PostgreSQL text cannot), is a 400."""
    value = request.args.get(name, "")
    if "\x00" in value:
        abort(400, f"{name} must not contain NUL characters")
    return value


@bp.get("/", endpoint="jobs")
def jobs_page() -> str:
    status, owner, q, page = _filters()
    with services().db.session() as db:
        owners = list(db.scalars(select(Account.name).order_by(Account.name)))
    return render_template("admin/jobs.html", statuses=STATUSES, owners=owners, status=status, owner=owner, q=q,
                           page=page)


@bp.get("/jobs.json")
def jobs_json() -> Response:
    """One page of the jobs table, newest first; the Jobs page polls it."""
    status, owner, q, page = _filters()
    query = select(Job, Account.name).join(Account, Account.id == Job.account_id)
    if status:
        query = query.where(Job.status == status)
    if owner:
        query = query.where(Account.name == owner)
    if q:
        query = query.where(Job.id.startswith(q, autoescape=True))
    with services().db.session() as db:
        total = db.scalar(select(func.count()).select_from(query.subquery()))
        rows = db.execute(query.order_by(Job.created_at.desc(), Job.id.desc())
                          .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
        queue = standings(db, services().redis, [job for job, _ in rows])
        data = [job_row(job, name, queue.get(job.id)) for job, name in rows]
    return jsonify(jobs=data, total=total, page=page, pages=max(1, math.ceil(total / PAGE_SIZE)))


def _load(db: Session, job_id: str) -> Job:
    _check_id(job_id)
    job = db.scalar(select(Job).where(Job.id == job_id).options(selectinload(Job.snapshots), selectinload(Job.inputs)))
    if job is None:
        abort(404, f"There is no job {job_id}.")
    return job


def _check_id(job_id: str) -> None:
    """404 without a query for what cannot be a job id (NUL bytes break PostgreSQL text)."""
    if not is_job_id(job_id):
        abort(404, f"There is no job {job_id[:100]!r}.")


def _state(db: Session, job: Job) -> dict:
    losses = list(db.scalars(select(LossPoint).where(LossPoint.job_id == job.id)
                             .order_by(LossPoint.iteration, LossPoint.id)))
    return job_state(job, losses, standing(db, services().redis, job))


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    with services().db.session() as db:
        job = _load(db, job_id)
        owner = db.scalar(select(Account.name).where(Account.id == job.account_id))
        key_prefix = db.scalar(select(ApiKey.prefix).where(ApiKey.id == job.api_key_id)) if job.api_key_id else None
        state = _state(db, job)
        sent = [history.delivery_out(d) for d in history.deliveries_for(db, job.id)]
    return render_template("admin/job.html", job=job, owner=owner, key_prefix=key_prefix, state=state,
                           deliveries=sent)


@bp.get("/jobs/<job_id>/state.json")
def job_state_json(job_id: str) -> Response:
    with services().db.session() as db:
        return jsonify(_state(db, _load(db, job_id)))


@bp.get("/jobs/<job_id>/inputs/<int(max=1000):position>")
def input_thumbnail(job_id: str, position: int) -> Response:
    """A small PNG of an input image (the originals can be large)."""
    _check_id(job_id)
    with services().db.session() as db:
        item = db.scalar(select(JobInput).where(JobInput.job_id == job_id, JobInput.position == position))
    if item is None:
        abort(404, "No such input image.")
    try:
        image = open_image(services().storage.get(input_key(item.sha256)), max_pixels=services().settings.max_pixels)
    except (StorageKeyError, ImageError):
        abort(404, "The input image is no longer stored.")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    response = Response(buffer.getvalue(), mimetype="image/png")
    response.set_etag(item.sha256)
    response.headers["Cache-Control"] = "private, max-age=31536000, immutable"
    return response.make_conditional(request)


@bp.get("/jobs/<job_id>/snapshots/<int(max=2147483647):iteration>")
def snapshot(job_id: str, iteration: int) -> Response:
    with services().db.session() as db:
        job = _load(db, job_id)
        snap = db.scalar(select(Snapshot).where(Snapshot.job_id == job_id, Snapshot.iteration == iteration))
    if snap is None:
        abort(404, f"No snapshot at iteration {iteration}.")
    return image_response(snap.key, snap.sha256, job.params["output_format"])


@bp.get("/jobs/<job_id>/result")
def result(job_id: str) -> Response:
    with services().db.session() as db:
        job = _load(db, job_id)
    if job.result_key is None or job.result_sha256 is None:
        abort(404, "This job has no result.")
    return image_response(job.result_key, job.result_sha256, job.params["output_format"])


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> Response:
    svc = services()
    with svc.db.session() as db:
        if _load(db, job_id).state.terminal:
            flash("The job had already ended.")
        elif lifecycle.cancel(db, job_id) is JobStatus.CANCELED:
            db.expire_all()
            announce.status_changed(svc, current_app.extensions["celery"], _load(db, job_id))
            flash("Canceled.")
        else:
            flash("Asked the worker to stop; the job ends as canceled within a moment.")
    return redirect(url_for("admin.job", job_id=job_id), 303)


@bp.post("/jobs/<job_id>/retry")
def retry(job_id: str) -> Response:
    """A new job with the same inputs, parameters and webhook, for the same account and key,
    within the same active-job caps as a submission; the same work, so the original's batch key
    (it batches as a submission would) and prediction (its ETA while queued)."""
    svc, celery = services(), current_app.extensions["celery"]
    with svc.db.session() as db:
        old = _load(db, job_id)
        try:
            new = lifecycle.create(
                db, svc.settings, svc.storage, account_id=old.account_id, api_key_id=old.api_key_id,
                params=old.params, inputs=[lifecycle.NewInput(InputRole(i.role), i.sha256, i.filename, i.size_bytes)
                                           for i in old.inputs],
                request_hash=old.request_hash, webhook_url=old.webhook_url, webhook_events=old.webhook_events,
                batch_key=old.batch_key, prediction=old.prediction)
        except (lifecycle.TooManyActive, lifecycle.InputGone) as exc:
            db.rollback()
            flash(f"Not retried: {exc}.")
            return redirect(url_for("admin.job", job_id=job_id), 303)
        db.commit()
    enqueue(celery, svc.db, new.id)
    flash(f"Retrying job {job_id} as this new job.")
    return redirect(url_for("admin.job", job_id=new.id), 303)


@bp.post("/jobs/<job_id>/delete")
def delete(job_id: str) -> Response:
    svc = services()
    with svc.db.session() as db:
        _load(db, job_id)
        lifecycle.delete(db, svc.storage, job_id)
    announce.deleted(svc, job_id)
    flash(f"Deleted job {job_id}.")
    return redirect(url_for("admin.jobs"), 303)


@bp.post("/deliveries/<delivery_id>/redeliver")
def redeliver(delivery_id: str) -> Response:
    """Send a webhook delivery again now (same webhook-id and body)."""
    if not history.is_delivery_id(delivery_id):
        abort(404, f"There is no delivery {delivery_id[:64]!r}.")
    try:
        event = history.redeliver(services(), current_app.extensions["celery"], delivery_id)
    except history.InFlight:
        with services().db.session() as db:
            job_id = history.find(db, delivery_id).job_id
        flash("An attempt at this delivery is under way; try again when it has ended.")
        return redirect(url_for("admin.job", job_id=job_id), 303)
    if event is None:
        abort(404, f"There is no delivery {delivery_id}.")
    flash(f"Redelivering {event.type} to {event.url}.")
    return redirect(url_for("admin.job", job_id=event.job_id), 303)
