"""`GET /v1/jobs/{id}/events`: Server-Sent Events relayed from the job's Redis channel.

We subscribe before reading the job, so nothing published in between is lost; the first
event is always the job's current `status`, and the stream ends after a terminal status.
"""
from __future__ import annotations

import json
from typing import Iterator

import redis
from flask import Blueprint, Response, stream_with_context

from api.app import services
from api.auth import require_key
from api.errors import ProblemError
from api.job_routes import load_job
from shared import events
from shared.models import JobStatus
from shared.schemas import job_out

bp = Blueprint("events", __name__, url_prefix="/v1/jobs")
require_key(bp)


@bp.get("/<job_id>/events")
def stream(job_id: str) -> Response:
    svc = services()
    with svc.db.session() as session:
        load_job(session, job_id)  # 404 before subscribing
    pubsub = svc.redis.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(events.channel(job_id))
    except redis.RedisError:
        pubsub.close()
        raise ProblemError(503, "Service Unavailable", "live events are unavailable (Redis unreachable)",
                           headers={"Retry-After": "5"}) from None
    with svc.db.session() as session:
        current = job_out(load_job(session, job_id)).model_dump(mode="json")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(_relay(pubsub, current, svc.settings.sse_keepalive_seconds)),
                    mimetype="text/event-stream", headers=headers)


def _relay(pubsub: redis.client.PubSub, current: dict, keepalive: float) -> Iterator[str]:
    try:
        yield _sse("status", current)
        if JobStatus(current["status"]).terminal:
            return
        while True:
            message = pubsub.get_message(timeout=keepalive)
            if message is None:
                yield ": keep-alive\n\n"
                continue
            payload = json.loads(message["data"])
            yield _sse(payload["event"], payload["data"])
            if payload["event"] == "status" and JobStatus(payload["data"]["status"]).terminal:
                return
    except redis.RedisError:
        yield _sse("error", {"detail": "live events interrupted; reconnect or poll the job"})
    finally:
        pubsub.close()


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
