"""Result and snapshot images: immutable once written, so strong ETags and long private caching.

Streamed by the API, or (`ATELIER_STORAGE_REDIRECT_SECONDS` > 0 on a storage that can sign
URLs) answered with a `302` to a presigned URL of the object. Either way the API answers
`If-None-Match` itself with `304` and sends the image's ETag (its sha256); the redirect is cached
for at most half the URL's life, the object behind it for a year (S3 sends our Cache-Control).
"""
from __future__ import annotations

from flask import Blueprint, Response, request
from sqlalchemy import select

from api.app import services
from api.auth import require_key
from api.errors import ProblemError
from api.lookup import load_job
from shared.models import Job, Snapshot
from shared.schemas import OUTPUT_FORMATS
from shared.storage import StorageKeyError

bp = Blueprint("files", __name__, url_prefix="/v1/jobs")
require_key(bp)

CACHE_CONTROL = "private, max-age=31536000, immutable"
MAX_ITERATION = 2**31 - 1
GENERIC = "application/octet-stream"


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
    """An immutable stored image, with a strong ETag (its sha256) for conditional requests. A
    client that has it gets `304` without the object being read or a URL signed."""
    storage, seconds = services().storage, services().settings.storage_redirect_seconds
    mimetype = _media_type(OUTPUT_FORMATS[output_format])
    fresh = request.if_none_match.contains(digest)
    url = storage.presigned_url(key, seconds, mimetype, CACHE_CONTROL) if seconds > 0 and not fresh else None
    if url is not None:
        response = Response(status=302, headers={"Location": url,
                                                 "Cache-Control": f"private, max-age={seconds // 2}"})
    else:
        try:
            response = Response(b"" if fresh else storage.get(key), status=304 if fresh else 200, mimetype=mimetype)
        except StorageKeyError:
            raise ProblemError(404, "Not Found", "the image is no longer stored") from None
        response.headers["Cache-Control"] = CACHE_CONTROL
    response.set_etag(digest)
    return response.make_conditional(request)


def _media_type(image_type: str) -> str:
    """The image's own type, unless `Accept` prefers the generic one (as some generated clients ask)."""
    return request.accept_mimetypes.best_match([image_type, GENERIC], default=image_type)
