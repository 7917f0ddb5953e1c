"""Which device each worker runs jobs on, for the dashboard's System page.

Celery's inspect tells which workers are online and what they run, but not on what hardware:
each GPU worker's pool child reports that into a Redis hash keyed by the worker's node name
(`worker.presence`), and the dashboard reads it here, without loading the engine.
"""
from __future__ import annotations

import json

import redis

DEVICES_KEY = "atelier:worker_devices"


def report_device(client: redis.Redis, node: str, description: dict[str, object]) -> None:
    client.hset(DEVICES_KEY, node, json.dumps(description))


def read_devices(client: redis.Redis) -> dict[str, dict]:
    """Node name -> device description (`device`, `name`, `memory_bytes`), as the workers last reported."""
    return {name.decode(): json.loads(value) for name, value in client.hgetall(DEVICES_KEY).items()}
