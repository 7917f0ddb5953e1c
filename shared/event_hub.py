"""Live job events for one process: ONE Redis subscription (to every job's channel) fanned out
to the viewers in this process, so thousands of open event streams cost one Redis connection,
not one each.

    with services.event_hub.subscribe(job_id) as subscription:   # registered before it returns
        ...read the job's current state...                         # nothing published after this is missed
        event = subscription.get(timeout=15)                       # an events.Event, or None on timeout

Anything that waits on a job's events (the SSE route, a request waiting for a job to end)
subscribes here. The subscription is to the pattern `atelier:job:*`, made when the first viewer
arrives: a viewer registers in memory only, so there is no per-viewer Redis round trip and no
window between subscribing and being subscribed. Each process receives every job's events and
decodes only those someone here follows (a few hundred small messages a second even with
hundreds of GPUs busy).

If the Redis connection drops, every open subscription gets `Interrupted` (events published
meanwhile would be lost, so a viewer must not wait on) and the next `subscribe` connects again;
`subscribe` raises `redis.RedisError` while Redis is unreachable. The listener is a thread, or
under gunicorn's gevent worker (monkey-patched) a greenlet; it stops after `idle_seconds` with
no viewers. A viewer that does not read (a stalled client) is cut off past `max_backlog` events
rather than queueing without bound.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

import redis

from shared import events

log = logging.getLogger(__name__)

CONFIRM_SECONDS = 5.0   # to wait for Redis to confirm the pattern subscription


class Interrupted(Exception):
    """Live events stopped (Redis connection lost, or the viewer fell too far behind)."""


_INTERRUPTED = object()


class Subscription:
    """One viewer's queue of a job's events; close it (or use it as a context manager) when done."""

    def __init__(self, hub: EventHub, channel: bytes) -> None:
        self.hub, self.channel = hub, channel
        self.queue: queue.SimpleQueue = queue.SimpleQueue()

    def get(self, timeout: float) -> events.Event | None:
        """The next event, or None after `timeout` seconds without one. Raises Interrupted."""
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _INTERRUPTED:
            raise Interrupted("live events interrupted")
        return item

    def close(self) -> None:
        self.hub._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class EventHub:
    def __init__(self, client: redis.Redis, idle_seconds: float = 30.0, max_backlog: int = 1000) -> None:
        self.client, self.idle_seconds, self.max_backlog = client, idle_seconds, max_backlog
        self._lock = threading.Lock()
        self._viewers: dict[bytes, set[Subscription]] = {}
        self._pubsub: redis.client.PubSub | None = None   # set while a listener runs
        self._idle_since = time.monotonic()

    def subscribe(self, job_id: str) -> Subscription:
        """Follow `job_id`'s events from now on. Raises redis.RedisError if Redis is unreachable."""
        subscription = Subscription(self, events.channel(job_id).encode())
        with self._lock:
            if self._pubsub is None:
                self._start()
            self._viewers.setdefault(subscription.channel, set()).add(subscription)
        return subscription

    def viewers(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._viewers.values())

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            viewers = self._viewers.get(subscription.channel)
            if viewers is not None:
                viewers.discard(subscription)
                if not viewers:
                    del self._viewers[subscription.channel]
                    if not self._viewers:
                        self._idle_since = time.monotonic()

    def _start(self) -> None:
        """Subscribe (waiting for Redis to confirm) and start the listener; under the lock."""
        pubsub = self.client.pubsub()
        try:
            pubsub.psubscribe(events.CHANNEL_PATTERN)
            deadline = time.monotonic() + CONFIRM_SECONDS
            while (message := pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))) is None \
                    or message["type"] != "psubscribe":
                if time.monotonic() >= deadline:
                    raise redis.TimeoutError("Redis did not confirm the event subscription")
        except BaseException:
            pubsub.close()
            raise
        self._pubsub, self._idle_since = pubsub, time.monotonic()
        threading.Thread(target=self._listen, args=(pubsub,), name="event-hub", daemon=True).start()

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        try:
            while self._relay_one(pubsub):
                pass
        finally:
            pubsub.close()

    def _relay_one(self, pubsub: redis.client.PubSub) -> bool:
        """Wait up to a second for one message and hand it to its viewers; False: stop listening."""
        try:
            message = pubsub.get_message(timeout=1.0)
        except (redis.RedisError, OSError) as exc:
            log.warning("live events: Redis connection lost (%s); interrupting %d viewer(s)", exc, self.viewers())
            with self._lock:
                for viewers in self._viewers.values():
                    for subscription in viewers:
                        subscription.queue.put(_INTERRUPTED)
                self._viewers.clear()
                self._pubsub = None
            return False
        with self._lock:
            if message is None:
                if not self._viewers and time.monotonic() - self._idle_since > self.idle_seconds:
                    self._pubsub = None  # the next subscribe starts a fresh listener
                    return False
                return True
            if message["type"] != "pmessage":
                return True
            viewers = list(self._viewers.get(message["channel"], ()))
        if viewers:
            self._deliver(events.decode(message["data"]), viewers)
        return True

    def _deliver(self, event: events.Event, viewers: list[Subscription]) -> None:
        for subscription in viewers:
            if subscription.queue.qsize() >= self.max_backlog:
                log.warning("live events: a viewer of %s fell %d events behind; cut off",
                            subscription.channel.decode(), self.max_backlog)
                self._remove(subscription)
                subscription.queue.put(_INTERRUPTED)
            else:
                subscription.queue.put(event)
