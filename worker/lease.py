"""Our hold on a running job: claimed once, renewed by progress writes and by a heartbeat thread,
and lost for good once the row is no longer ours (deleted, or reclaimed after our lease ran out).

Every write a run makes is guarded by the lease (`shared.lifecycle`), so a job that was handed to
another worker is never written by two. The heartbeat keeps the lease alive through long gaps
between engine callbacks (network loading, stage set-up, the final quality report).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from shared import lifecycle
from shared.db import with_retries
from shared.models import JobStatus
from shared.services import Services

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lease:
    def __init__(self, services: Services, job_id: str) -> None:
        self.services, self.settings, self.job_id = services, services.settings, job_id
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.cancel_requested = False
        self.lost = False          # no longer ours: write nothing more
        self._lock = threading.Lock()  # the engine callback and the heartbeat both renew

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
        return self.retrying(write, f"recording {status.value}")

    def release(self, progress: dict[str, Any] | None, checkpoint_key: str | None) -> bool:
        """Hand the job back to the queue (the worker is stopping); False if not ours or being canceled."""
        def write() -> bool:
            with self.services.db.session() as session:
                if progress is not None:
                    lifecycle.renew(session, self.job_id, self.owner, self.settings.lease_seconds, progress)
                return lifecycle.release(session, self.job_id, self.owner, checkpoint_key)
        return self.retrying(write, "hand-back")

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renew every lease/3 seconds in a thread while the body runs."""
        stopped = threading.Event()

        def beat() -> None:
            while not stopped.wait(self.settings.lease_seconds / 3):
                try:
                    self.renew()
                except SQLAlchemyError as exc:  # out of retries: the job's own next write fails the same way
                    log.error("job %s: heartbeat could not renew the lease: %s", self.job_id, exc)

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stopped.set()
            thread.join()
