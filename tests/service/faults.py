"""Fault actions, kept apart from the scenarios that use them (as Celery's `t/smoke` tests do):
every scenario injects its fault through one of these.

Every fault is real: a signal to a real Celery worker process (or to any process, by its pid), a
real redis-server stopped and started on the same port, a real memory cap on the process that runs
jobs (its allocations fail past it, as on a device whose memory is used up), the real SQLite database taken out from
under its connections, a real storage directory replaced by a file so that writes under it fail
(as root, too), a real webhook receiver taken off its port, the S3 server stopped (every request
to the bucket fails to connect) and started again, a real TCP connection closed after the server
answered but before the answer arrived.

- workers and processes: `kill_worker`, `terminate_worker`, `wait_exited`, `kill_process`,
  `limit_memory` (the worker's job process runs out of memory beyond a cap)
- Redis: `stop_redis`, `start_redis`
- the database: `DatabaseOutage`, `cut_database`, `restore_database`
- storage: `break_storage`, `repair_storage`
- webhook receivers: `stop_receiver`, `start_receiver`
- object storage: `stop_s3`, `start_s3`
- the network: `lose_responses` (a `LossyProxy`)
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from tests.service.helpers import RedisServer, S3Server, WorkerProcess
from tests.service.webhook_receiver import Receiver


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


def kill_process(pid: int, group: bool = False) -> None:
    """SIGKILL one process by its pid (say, a child that `atelier run` supervises), or with `group`
    its whole process group (a Celery worker and its pool): it dies at once, nothing cleans up."""
    if group:
        os.killpg(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)


def limit_memory(worker: WorkerProcess, headroom: int) -> int:
    """Cap the memory of the worker's pool child (the process that runs jobs) at what it holds now
    plus `headroom` bytes (RLIMIT_DATA: its heap and anonymous mappings, where tensors live), so
    that a larger job's allocations fail there as on a device that is full. Returns the cap."""
    pid = worker.process.pid
    (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    status = Path(f"/proc/{child}/status").read_text()
    held = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmData:"))
    resource.prlimit(int(child), resource.RLIMIT_DATA, (held + headroom, resource.RLIM_INFINITY))
    return held + headroom


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


# ---- webhook receivers ------------------------------------------------------------------------

def stop_receiver(receiver: Receiver) -> None:
    """Take a webhook receiver down: connections to its port are refused until `start_receiver`."""
    receiver.stop()


def start_receiver(receiver: Receiver) -> None:
    """Bring the receiver back on the same port, keeping what it had received."""
    receiver.start()


# ---- object storage ---------------------------------------------------------------------------

def stop_s3(server: S3Server) -> None:
    """Take the object store away: every request to it fails to connect. It keeps nothing."""
    server.stop()


def start_s3(server: S3Server) -> None:
    """Bring the object store back on the same port, its bucket made again, empty."""
    server.start()


# ---- the network ------------------------------------------------------------------------------

class LossyProxy:
    """A TCP proxy on 127.0.0.1:`port` in front of 127.0.0.1:`target`. The first `losses`
    connections carry the request to the server and let it answer, but are closed before the
    answer reaches the client: a response lost on the way (a flaky network, a proxy's timeout).
    Later connections pass everything both ways."""

    def __init__(self, target: int, losses: int) -> None:
        self.target, self.losses, self.lost = target, losses, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self.lock:
                lose = self.lost < self.losses
                self.lost += lose
            threading.Thread(target=self._relay, args=(client, lose), daemon=True).start()

    def _relay(self, client: socket.socket, lose: bool) -> None:
        server = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=_pipe, args=(client, server), daemon=True).start()
        if lose:
            server.recv(1)  # the server has answered: the job exists; its answer goes nowhere
            for s in (client, server):
                _hang_up(s)
        else:
            _pipe(server, client)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            _hang_up(s)


def _hang_up(connection: socket.socket) -> None:
    """Close both ways at once (a bare close() would wait for a reader blocked in another thread)."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


def lose_responses(target_port: int, count: int = 1) -> LossyProxy:
    """A proxy to `target_port` that loses the answers to its first `count` connections."""
    return LossyProxy(target_port, count)
