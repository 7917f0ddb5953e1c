"""Fault actions, kept apart from the scenarios that use them (as Celery's `t/smoke` tests do).

Every fault is real: a signal to a real Celery worker process, a real redis-server stopped and
started on the same port, the real SQLite database taken out from under its connections, a real
storage directory replaced by a file so that writes under it fail (as root, too).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from tests.service.conftest import RedisServer, WorkerProcess


# ---- workers ----------------------------------------------------------------------------------

def kill_worker(worker: WorkerProcess) -> None:
    """SIGKILL the worker's main process and its pool child at once: a crashed machine, no cleanup."""
    worker.kill()


def terminate_worker(worker: WorkerProcess, whole_group: bool = False) -> None:
    """SIGTERM the worker's main process only, as `docker stop` or Kubernetes do; or, with
    `whole_group`, every process of it at once, as systemd does (KillMode=control-group)."""
    if worker.process.poll() is None:
        if whole_group:
            os.killpg(worker.process.pid, signal.SIGTERM)
        else:
            os.kill(worker.process.pid, signal.SIGTERM)


def wait_exited(worker: WorkerProcess, timeout: float = 120.0) -> int:
    """The worker's exit status once it is gone (raises on timeout)."""
    try:
        return worker.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not exit within {timeout}s:\n{worker.output()[-3000:]}") from None


# ---- Redis ------------------------------------------------------------------------------------

def stop_redis(server: RedisServer) -> None:
    """Take the broker and event bus away: every connection to it drops, nothing is kept."""
    server.stop()


def start_redis(server: RedisServer) -> None:
    """Bring Redis back on the same port, empty (it keeps nothing on disk)."""
    server.start()


# ---- the database -----------------------------------------------------------------------------

class DatabaseOutage:
    """Take a SQLite database away: its directory is moved aside, so new connections fail
    ("unable to open database file"), open ones fail to write (the file moved) and are dropped
    at their next checkout (shared.db checks the file is still there). `restore()` moves it back."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        if url.get_backend_name() != "sqlite" or not url.database:
            raise ValueError(f"DatabaseOutage needs a SQLite file database, not {database_url}")
        self.directory = Path(url.database).resolve().parent
        self.aside = self.directory.with_name(self.directory.name + ".down")
        self.cut_ = False

    def cut(self) -> None:
        os.rename(self.directory, self.aside)
        self.cut_ = True

    def restore(self) -> None:
        if not self.cut_:
            return
        if self.directory.exists():  # something made a fresh, empty database there meanwhile
            shutil.rmtree(self.directory)
        os.rename(self.aside, self.directory)
        self.cut_ = False


def cut_database(database_url: str) -> DatabaseOutage:
    outage = DatabaseOutage(database_url)
    outage.cut()
    return outage


def restore_database(outage: DatabaseOutage) -> None:
    outage.restore()


class InsertGate:
    """Holds every `INSERT INTO <table>` on an engine just before it runs, until `release()`, until
    `parties` of them are held at once, or for at most `timeout` seconds: a real transaction
    paused at its racy point (it has read what it decided on, and not yet written), so a test can
    run a concurrent request against it. Whatever locks the transaction already holds, it keeps."""

    def __init__(self, parties: int, timeout: float) -> None:
        self.parties, self.timeout = parties, timeout
        self.held = 0            # inserts that reached the gate
        self._waiting = 0
        self._open = False
        self._condition = threading.Condition()

    def release(self) -> None:
        with self._condition:
            self._open = True
            self._condition.notify_all()

    def _hold(self) -> None:
        with self._condition:
            self.held += 1
            self._waiting += 1
            if self.parties and self._waiting >= self.parties:
                self._open = True
            self._condition.notify_all()
            self._condition.wait_for(lambda: self._open, timeout=self.timeout)
            self._waiting -= 1


@contextmanager
def hold_inserts(engine: Engine, table: str, parties: int = 0, timeout: float = 3.0) -> Iterator[InsertGate]:
    """See `InsertGate`; the gate is removed when the block ends."""
    gate = InsertGate(parties, timeout)
    prefix = f"INSERT INTO {table} "

    def before(_conn, _cursor, statement: str, *_args) -> None:
        if statement.startswith(prefix):
            gate._hold()

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield gate
    finally:
        gate.release()
        event.remove(engine, "before_cursor_execute", before)


# ---- storage ----------------------------------------------------------------------------------

def break_storage(directory: Path) -> None:
    """Put a regular file where a storage directory belongs: creating anything under it fails
    (NotADirectoryError), whatever the caller's privileges."""
    if directory.is_dir():
        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.write_bytes(b"not a directory\n")


def repair_storage(directory: Path) -> None:
    if directory.is_file():
        directory.unlink()
