"""`GET /v1/jobs/{id}/events`: Server-Sent Events relayed from the job's Redis channel; and
`wait_for_end`, which holds a `Prefer: wait` submission on the same events.

We subscribe (in this process's `shared.event_hub`) before reading the job, so nothing published
in between is lost; the first event is always the job's current `status`, and the stream ends
after a terminal status, or after `deleted` if the job is deleted meanwhile. While the job is
queued, a `queue` event tells where it stands whenever that changed, looked up every
`QUEUE_REFRESH_SECONDS` on this process's `queue_standing.Board` (one read of the queue for all
its streams); a `status` event that puts the job back in the queue carries its standing, read
afresh. An open stream or wait holds no database connection or Redis
connection of its own: under gunicorn's gevent worker it is a greenlet waiting on its queue.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterator

import redis
from flask import Blueprint, Response, current_app, stream_with_context

from api.app import services
from api.auth import require_key
from api.errors import ProblemError
from api.lookup import find_job, load_job
from api.queue_standing import Board, standing
from shared.event_hub import Interrupted, Subscription
from shared.events import Event
from shared.models import JobStatus
from shared.schemas import job_out

log = logging.getLogger(__name__)
bp = Blueprint("events", __name__, url_prefix="/v1/jobs")
require_key(bp)
QUEUE_REFRESH_SECONDS = 5.0


@bp.record_once
def _board(state) -> None:
    state.app.extensions["queue_board"] = Board(QUEUE_REFRESH_SECONDS)


@bp.get("/<job_id>/events")
def stream(job_id: str) -> Response:
    svc = services()
    with svc.db.session() as session:
        load_job(session, job_id)  # 404 before subscribing
    try:
        subscription = svc.event_hub.subscribe(job_id)
    except redis.RedisError:
        raise ProblemError(503, "Service Unavailable", "live events are unavailable (Redis unreachable)",
                           headers={"Retry-After": "5"}) from None
    try:
        with svc.db.session() as session:
            job = load_job(session, job_id)
            current = job_out(job, standing(session, svc.redis, job)).model_dump(mode="json")
            created_at, prediction = job.created_at, job.prediction
    except BaseException:
        subscription.close()
        raise
    board: Board = current_app.extensions["queue_board"]

    def queue(fresh: bool) -> dict[str, Any] | None:
        now = board.standing(svc.db, svc.redis, created_at, job_id, prediction, fresh)
        return now.model_dump(mode="json") if now is not None else None

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    relay = _relay(subscription, current, svc.settings.sse_keepalive_seconds, queue)
    response = Response(stream_with_context(relay), mimetype="text/event-stream", headers=headers)
    response.call_on_close(subscription.close)  # also when the client left before the stream began
    return response


def wait_for_end(job_id: str, seconds: float) -> None:
    """Return once the caller's job has ended or was deleted, or after `seconds`: a terminal
    `status` event (or `deleted`) wakes it, so it costs no database polling (a greenlet under the
    gevent worker; hence also ATELIER_MAX_PREFER_WAIT_SECONDS). Without Redis it returns at once;
    the caller reads the job either way."""
    try:
        subscription = services().event_hub.subscribe(job_id)
    except redis.RedisError as exc:
        log.warning("job %s: not waiting for it to end (Redis unreachable: %s)", job_id, exc)
        return
    with subscription:
        with services().db.session() as session:
            job = find_job(session, job_id)
            if job is None or job.state.terminal:  # deleted or ended already
                return
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                event = subscription.get(timeout=left)
                if event is not None and _ends(event):
                    return
        except Interrupted as exc:
            log.warning("job %s: stopped waiting for it to end (%s)", job_id, exc)


def _ends(event: Event) -> bool:
    return event.kind == "deleted" or event.kind == "status" and JobStatus(event.data["status"]).terminal


def _relay(subscription: Subscription, current: dict, keepalive: float,
           queue: Callable[[bool], dict[str, Any] | None]) -> Iterator[str]:
    with subscription:
        yield _sse("status", json.dumps(current))
        if JobStatus(current["status"]).terminal:
            return
        queued, standing_now = current["status"] == JobStatus.QUEUED, current["queue"]
        while True:
            try:
                event = subscription.get(timeout=min(keepalive, QUEUE_REFRESH_SECONDS) if queued else keepalive)
            except Interrupted:
                yield _sse("error", json.dumps({"detail": "live events interrupted; reconnect or poll the job"}))
                return
            if event is None:
                if queued and (latest := queue(False)) is not None and latest != standing_now:
                    standing_now = latest
                    yield _sse("queue", json.dumps(latest))
                else:
                    yield ": keep-alive\n\n"
                continue
            if event.kind == "status":
                queued = event.data["status"] == JobStatus.QUEUED
                if queued:  # put back (a worker's hand-back, a lease run out): the worker sends no standing
                    standing_now = queue(True)
                    yield _sse("status", json.dumps(event.data | {"queue": standing_now}))
                    continue
            yield _sse(event.kind, event.data_json)
            if _ends(event):
                return


def _sse(event: str, data_json: str) -> str:
    return f"event: {event}\ndata: {data_json}\n\n"
