"""Result and snapshot images: immutable once written, so strong ETags and long private caching."""
from __future__ import annotations

from flask import Blueprint, Response, request
from sqlalchemy import select

from api import services
from api.auth import require_key
from api.errors import ProblemError
from api.job_routes import load_job
from shared.models import Job, Snapshot
from shared.schemas import OUTPUT_FORMATS
from shared.storage import StorageKeyError

bp = Blueprint("files", __name__, url_prefix="/v1/jobs")
require_key(bp)

CACHE_CONTROL = "private, max-age=31536000, immutable"
MAX_ITERATION = 2**31 - 1


def _gone_unless_kept(job: Job) -> None:
    if job.data_removed_at is not None:
        raise ProblemError(410, "Gone", f"job {job.id}'s files were removed on {job.data_removed_at:%Y-%m-%d} under "
                                        "the retention policy; the job itself is kept")


@bp.get("/<job_id>/result")
def result(job_id: str) -> Response:
    with services().db.session() as session:
        job = load_job(session, job_id)
    _gone_unless_kept(job)
    if job.result_key is None or job.result_sha256 is None:
        raise ProblemError(404, "Not Found", f"job {job_id} has no result (status {job.status})")
    return image_response(job.result_key, job.result_sha256, job.params["output_format"])


@bp.get("/<job_id>/snapshots/<int:iteration>")
def snapshot(job_id: str, iteration: int) -> Response:
    with services().db.session() as session:
        job = load_job(session, job_id)
        _gone_unless_kept(job)
        if iteration > MAX_ITERATION:  # beyond any stored iteration, and beyond what SQLite can bind
            raise ProblemError(404, "Not Found", f"job {job_id} has no snapshot at iteration {iteration}")
        snap = session.scalar(select(Snapshot).where(Snapshot.job_id == job.id, Snapshot.iteration == iteration))
    if snap is None:
        raise ProblemError(404, "Not Found", f"job {job_id} has no snapshot at iteration {iteration}")
    return image_response(snap.key, snap.sha256, job.params["output_format"])


def image_response(key: str, digest: str, output_format: str) -> Response:
    """An immutable stored image, with a strong ETag (its sha256) for conditional requests."""
    try:
        data = services().storage.get(key)
    except StorageKeyError:
        raise ProblemError(404, "Not Found", "the image is no longer stored") from None
    response = Response(data, mimetype=OUTPUT_FORMATS[output_format])
    response.set_etag(digest)
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response.make_conditional(request)
