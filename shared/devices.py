"""Which device each worker runs jobs on, for the dashboard's System page and for the capacity
check at submission (`shared.capacity`).

Celery's inspect tells which workers are online and what they run, but not on what hardware,
and it takes a round of replies (a second) that a submission cannot wait for. So each GPU
worker's pool child reports its device into a Redis hash keyed by the worker's node name, and
the worker's main process, on every Celery heartbeat (2 s), marks the node alive for
`ALIVE_SECONDS` (`worker.presence`): a worker that stopped or died drops out of `live_devices`
within that time, without anyone cleaning up after it.
"""
from __future__ import annotations

import json

import redis

DEVICES_KEY = "atelier:worker_devices"
ALIVE_PREFIX = "atelier:worker_alive:"
ALIVE_SECONDS = 10  # five missed heartbeats
UNAVAILABLE = "unavailable: "  # how a report's `name` begins when the worker could not open its device


def report_device(client: redis.Redis, node: str, description: dict[str, object]) -> None:
    client.hset(DEVICES_KEY, node, json.dumps(description))
    mark_alive(client, node)


def mark_alive(client: redis.Redis, node: str) -> None:
    client.set(ALIVE_PREFIX + node, 1, ex=ALIVE_SECONDS)


def mark_gone(client: redis.Redis, node: str) -> None:
    client.delete(ALIVE_PREFIX + node)


def read_devices(client: redis.Redis) -> dict[str, dict]:
    """Node name -> device description (`device`, `name`, `memory_bytes`, `precision`, and
    `pace` once it ran a job alone: `worker.presence.paced`), as the workers last reported."""
    return {name.decode(): json.loads(value) for name, value in client.hgetall(DEVICES_KEY).items()}


def live_devices(client: redis.Redis) -> dict[str, dict]:
    """`read_devices`, only of the workers alive now."""
    devices = read_devices(client)
    if not devices:
        return {}
    alive = client.mget([ALIVE_PREFIX + node for node in devices])
    return {node: d for (node, d), flag in zip(devices.items(), alive) if flag is not None}


def working_devices(client: redis.Redis) -> dict[str, dict]:
    """`live_devices` that run jobs: not those of workers that could not open their device."""
    return {node: d for node, d in live_devices(client).items() if not str(d.get("name", "")).startswith(UNAVAILABLE)}
