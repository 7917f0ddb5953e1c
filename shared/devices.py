"""Which device each worker runs jobs on, for the dashboard's System page and for the capacity
check at submission (`shared.capacity`).

Celery's inspect tells which workers are online and what they run, but not on what hardware,
and it takes a round of replies (a second) that a submission cannot wait for. So each GPU
worker's pool child reports its device into a Redis hash keyed by the worker's node name, and
the worker's main process, on every Celery heartbeat (2 s), marks the node alive for
`ALIVE_SECONDS` (`worker.presence`): a worker that stopped or died drops out of `live_devices`
within that time, without anyone cleaning up after it. A worker that stops takes its report with
it; one that died leaves it, and the sweep forgets it a day later (`prune`): with containers coming
and going, every submission would otherwise read every node ever seen.
"""
from __future__ import annotations

import json
import time

import redis

DEVICES_KEY = "atelier:worker_devices"
ALIVE_PREFIX = "atelier:worker_alive:"
SEEN_KEY = "atelier:worker_seen"  # node -> when it was last marked alive (a sorted set)
ALIVE_SECONDS = 10  # five missed heartbeats
FORGET_SECONDS = 24 * 3600  # a node not alive for this long is forgotten
UNAVAILABLE = "unavailable: "  # how a report's `name` begins when the worker could not open its device


def report_device(client: redis.Redis, node: str, description: dict[str, object]) -> None:
    client.hset(DEVICES_KEY, node, json.dumps(description))
    mark_alive(client, node)


def mark_alive(client: redis.Redis, node: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.set(ALIVE_PREFIX + node, 1, ex=ALIVE_SECONDS)
        pipe.zadd(SEEN_KEY, {node: time.time()})
        pipe.execute()


def mark_gone(client: redis.Redis, node: str) -> None:
    """A worker that stops: no longer alive, and its report forgotten (it reports again when it
    starts again)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.delete(ALIVE_PREFIX + node)
        pipe.hdel(DEVICES_KEY, node)
        pipe.zrem(SEEN_KEY, node)
        pipe.execute()


def prune(client: redis.Redis) -> list[str]:
    """Forget the reports of nodes not alive for `FORGET_SECONDS` (workers that died: killed, their
    machine gone); a report with no time at all (from before these times were kept) is given the
    present one. The nodes forgotten."""
    never = set(client.hkeys(DEVICES_KEY)) - set(client.zrange(SEEN_KEY, 0, -1))
    if never:
        client.zadd(SEEN_KEY, dict.fromkeys(never, time.time()), nx=True)
    stale = client.zrangebyscore(SEEN_KEY, "-inf", time.time() - FORGET_SECONDS)
    if stale:
        with client.pipeline(transaction=False) as pipe:
            pipe.hdel(DEVICES_KEY, *stale)
            pipe.zrem(SEEN_KEY, *stale)
            pipe.execute()
    return sorted(node.decode() for node in stale)


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
