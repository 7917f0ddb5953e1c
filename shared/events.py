"""Live job events over Redis pub/sub, so any API process can stream any job's events.

Channel `atelier:job:<job id>`; each message is JSON `{"event": ..., "data": ...}` where event
is `status` (data: the job object), `progress` (data: the job's progress object), `snapshot`
(data: `{iteration, url, created_at}`) or `deleted` (data: `{id}`; nothing follows). Publishing
is best effort: the database stays the record, events are for live viewers. Viewers receive them
through their process's `shared.event_hub`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import redis

log = logging.getLogger(__name__)

EventType = Literal["status", "progress", "snapshot", "deleted"]
CHANNEL_PATTERN = "atelier:job:*"   # every job's channel


@dataclass(frozen=True)
class Event:
    """A received event; `data_json` is `data` encoded once, however many viewers relay it."""

    kind: str
    data: Any
    data_json: str


def channel(job_id: str) -> str:
    return f"atelier:job:{job_id}"


def encode(event: EventType, data: Any) -> str:
    return json.dumps({"event": event, "data": data}, default=str)


def decode(message: bytes | str) -> Event:
    payload = json.loads(message)
    return Event(payload["event"], payload["data"], json.dumps(payload["data"]))


def publish(client: redis.Redis, job_id: str, event: EventType, data: Any) -> None:
    try:
        client.publish(channel(job_id), encode(event, data))
    except redis.RedisError as exc:
        log.warning("could not publish %s event for job %s: %s", event, job_id, exc)
