"""`GET /v1/jobs/{id}/events`: Server-Sent Events relayed from the job's Redis channel; and
`wait_for_end`, which holds a `Prefer: wait` submission on the same channel.

We subscribe before reading the job, so nothing published in between is lost; the first
event is always the job's current `status`, and the stream ends after a terminal status.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Iterator

import redis
from flask import Blueprint, Response, stream_with_context

from api.app import services
from api.auth import require_key
from api.errors import ProblemError
from api.lookup import load_job
from shared import events
from shared.models import JobStatus
from shared.schemas import job_out

log = logging.getLogger(__name__)
bp = Blueprint("events", __name__, url_prefix="/v1/jobs")
require_key(bp)


@bp.get("/<job_id>/events")
def stream(job_id: str) -> Response:
    svc = services()
    with svc.db.session() as session:
        load_job(session, job_id)  # 404 before subscribing
    try:
        pubsub = _subscribe(job_id)
    except redis.RedisError:
        raise ProblemError(503, "Service Unavailable", "live events are unavailable (Redis unreachable)",
                           headers={"Retry-After": "5"}) from None
    with svc.db.session() as session:
        current = job_out(load_job(session, job_id)).model_dump(mode="json")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(_relay(pubsub, current, svc.settings.sse_keepalive_seconds)),
                    mimetype="text/event-stream", headers=headers)


def wait_for_end(job_id: str, seconds: float) -> None:
    """Return once the caller's job has ended, or after `seconds`: a terminal `status` event on the
    job's channel wakes it, so it costs no database polling. It holds the request's server thread
    and a Redis connection meanwhile (hence ATELIER_MAX_PREFER_WAIT_SECONDS). Without Redis it
    returns at once; the caller reads the job either way."""
    try:
        pubsub = _subscribe(job_id)
    except redis.RedisError as exc:
        log.warning("job %s: not waiting for it to end (Redis unreachable: %s)", job_id, exc)
        return
    try:
        with services().db.session() as session:
            if load_job(session, job_id).state.terminal:
                return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            if message is not None and _ends(json.loads(message["data"])):
                return
    except redis.RedisError as exc:
        log.warning("job %s: stopped waiting for it to end (Redis: %s)", job_id, exc)
    finally:
        pubsub.close()


def _subscribe(job_id: str) -> redis.client.PubSub:
    """A subscription to the job's channel (raises RedisError if Redis is unreachable)."""
    pubsub = services().redis.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(events.channel(job_id))
    except redis.RedisError:
        pubsub.close()
        raise
    return pubsub


def _ends(payload: dict) -> bool:
    return payload["event"] == "status" and JobStatus(payload["data"]["status"]).terminal


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
            if _ends(payload):
                return
    except redis.RedisError:
        yield _sse("error", {"detail": "live events interrupted; reconnect or poll the job"})
    finally:
        pubsub.close()


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
