"""`GET /v1/jobs/{id}/events`: Server-Sent Events relayed from the job's Redis channel.

We subscribe (in this process's `shared.event_hub`) before reading the job, so nothing published
in between is lost; the first event is always the job's current `status`, and the stream ends
after a terminal status. An open stream holds no thread, database connection or Redis
connection of its own: under gunicorn's gevent worker it is a greenlet waiting on its queue.
"""
from __future__ import annotations

import json
from typing import Iterator

import redis
from flask import Blueprint, Response, stream_with_context

from api import services
from api.auth import require_key
from api.errors import ProblemError
from api.job_routes import load_job
from shared.event_hub import Interrupted, Subscription
from shared.models import JobStatus
from shared.schemas import job_out

bp = Blueprint("events", __name__, url_prefix="/v1/jobs")
require_key(bp)


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
            current = job_out(load_job(session, job_id)).model_dump(mode="json")
    except BaseException:
        subscription.close()
        raise
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    response = Response(stream_with_context(_relay(subscription, current, svc.settings.sse_keepalive_seconds)),
                        mimetype="text/event-stream", headers=headers)
    response.call_on_close(subscription.close)  # also when the client left before the stream began
    return response


def _relay(subscription: Subscription, current: dict, keepalive: float) -> Iterator[str]:
    with subscription:
        yield _sse("status", json.dumps(current))
        if JobStatus(current["status"]).terminal:
            return
        while True:
            try:
                event = subscription.get(timeout=keepalive)
            except Interrupted:
                yield _sse("error", json.dumps({"detail": "live events interrupted; reconnect or poll the job"}))
                return
            if event is None:
                yield ": keep-alive\n\n"
                continue
            yield _sse(event.kind, event.data_json)
            if event.kind == "status" and JobStatus(event.data["status"]).terminal:
                return


def _sse(event: str, data_json: str) -> str:
    return f"event: {event}\ndata: {data_json}\n\n"
