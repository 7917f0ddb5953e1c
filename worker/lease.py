"""Our hold on a running job: claimed once, renewed by progress writes and by a heartbeat thread,
and lost for good once the row is no longer ours (deleted, or reclaimed after our lease ran out).

Every write a run makes is guarded by the lease (`shared.lifecycle`), so a job that was handed to
another worker is never written by two. The heartbeat keeps the lease alive through long gaps
between engine callbacks (network loading, stage set-up, the final quality report): one thread per
process for every lease it holds (a batch holds several), started by the process's first job. No
thread is started per job, because CPython's `Thread.start` never returns when the new thread dies
before it runs, as it can in a process short of memory (just after a batch ran out of it).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from shared import lifecycle
from shared.db import with_retries
from shared.models import JobStatus
from shared.services import Services

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lease:
    def __init__(self, services: Services, job_id: str) -> None:
        self.services, self.settings, self.job_id = services, services.settings, job_id
        self.claim_id = uuid.uuid4().hex[:8]  # names what this claim stores (`shared.storage`)
        self.owner = lifecycle.lease_owner(self.claim_id)
        self.cancel_requested = False
        self.lost = False          # no longer ours: write nothing more
        self._lock = threading.RLock()  # the engine callback and the heartbeat both renew

    def retrying(self, operation: Callable[[], T], what: str) -> T:
        """`operation` (which opens its own session), retried while the database is unavailable."""
        return with_retries(operation, seconds=self.settings.database_retry_seconds, what=f"job {self.job_id}: {what}")

    def claim(self) -> bool:
        def write() -> bool:
            with self.services.db.session() as session:
                return lifecycle.claim(session, self.job_id, self.owner, self.settings.lease_seconds,
                                       self.settings.max_attempts)
        return self.retrying(write, "claim")

    def renew(self, progress: dict[str, Any] | None = None) -> None:
        """Extend the lease (writing progress if given); learn whether to stop."""
        def write():
            with self.services.db.session() as session:
                return lifecycle.renew(session, self.job_id, self.owner, self.settings.lease_seconds, progress)
        with self._lock:
            answer = self.retrying(write, "progress" if progress is not None else "lease renewal")
        if answer is False:
            self.lose("deleted or reclaimed")
        elif answer is not None:
            self.cancel_requested = True

    def lose(self, why: str) -> None:
        """The job is no longer ours to write: stop at the next callback and record nothing."""
        if not self.lost:
            log.warning("job %s: lease lost (%s); stopping", self.job_id, why)
        self.lost = True

    def finish(self, status: JobStatus, **values: object) -> bool:
        """Record the outcome; False if the job is no longer ours."""
        def write() -> bool:
            with self.services.db.session() as session:
                return lifecycle.finish(session, self.job_id, self.owner, status, **values)
        return self._last(write, f"recording {status.value}")

    def release(self, progress: dict[str, Any] | None, checkpoint_key: str | None) -> bool:
        """Hand the job back to the queue (the worker is stopping); False if not ours or being canceled."""
        def write() -> bool:
            with self.services.db.session() as session:
                if progress is not None:
                    lifecycle.renew(session, self.job_id, self.owner, self.settings.lease_seconds, progress)
                return lifecycle.release(session, self.job_id, self.owner, checkpoint_key)
        return self._last(write, "hand-back")

    def _last(self, write: Callable[[], bool], what: str) -> bool:
        """The run's last write, and no renewal after it: a batch's job that ended early is still
        held by its process until the batch ends, and a renewal then would find the job no longer
        running and report the lease lost."""
        with self._lock:
            try:
                return self.retrying(write, what)
            finally:
                _heartbeat.drop(self)

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renewed by the process's heartbeat while the body runs, and not after it."""
        _heartbeat.hold(self)
        try:
            yield
        finally:
            _heartbeat.drop(self)


class Heartbeat:
    """The one thread of a process that renews each lease held there every lease/3 seconds."""

    def __init__(self) -> None:
        self._leases: set[Lease] = set()
        self._period = 1.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def hold(self, lease: Lease) -> None:
        """Renew `lease` from now on; start the thread unless it runs (a forked child starts its own)."""
        with self._lock:
            self._leases.add(lease)
            self._period = lease.settings.lease_seconds / 3
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        """Renew `lease` no more; a renewal under way ends first (it holds the lease's lock)."""
        with lease._lock, self._lock:
            self._leases.discard(lease)

    def _beat(self) -> None:
        while True:
            time.sleep(self._period)
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                try:
                    with lease._lock:
                        if self._holds(lease):  # not dropped since the list was taken
                            lease.renew()
                except Exception as exc:  # out of retries (the job's own next write fails the same way), or memory
                    log.error("job %s: heartbeat could not renew the lease: %s", lease.job_id, exc)

    def _holds(self, lease: Lease) -> bool:
        with self._lock:
            return lease in self._leases


_heartbeat = Heartbeat()
