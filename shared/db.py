"""Database engine and sessions for SQLite (the default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout so the API and a worker can write at the same
time; foreign keys are switched on so deleting a job deletes its rows everywhere.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")

# the errors a database that is unavailable raises (see `is_unavailable` for which of them are)
UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError)
# SQLite raises OperationalError for a missing table too: only these messages mean "unavailable"
SQLITE_UNAVAILABLE = ("unable to open database file", "database is locked", "disk i/o error",
                      "readonly database", "database table is locked")


def is_unavailable(error: BaseException) -> bool:
    """The database (not the statement or the schema) failed: unreachable, restarting, locked, file gone."""
    if not isinstance(error, UNAVAILABLE):
        return False
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.OperationalError) and type(error.orig).__module__.startswith("sqlite3"):
        return any(text in str(error.orig).lower() for text in SQLITE_UNAVAILABLE)
    return True

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> URL:
    """`postgresql://` means psycopg 3 here (the only PostgreSQL driver we install)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str) -> Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_pragmas)
    if parsed.database and parsed.database != ":memory:":
        _drop_connections_to_a_moved_file(engine, Path(parsed.database).resolve())
    return engine


def _drop_connections_to_a_moved_file(engine: Engine, path: Path) -> None:
    """SQLite's pre-ping: a pooled connection keeps the file it opened even after that file was
    moved or deleted. At checkout, a connection whose file is no longer at `path` is dropped, so
    the pool reconnects to what is there now (or fails as the database being unavailable)."""

    def inode() -> int | None:
        try:
            return os.stat(path).st_ino
        except OSError:
            return None

    @event.listens_for(engine, "connect")
    def _remember(_dbapi_connection, record) -> None:
        record.info["inode"] = inode()

    @event.listens_for(engine, "checkout")
    def _check(_dbapi_connection, record, _proxy) -> None:
        if record.info.get("inode") is not None and inode() != record.info["inode"]:
            raise exc.DisconnectionError(f"the database file {path} moved or went away")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def lock(session: Session, *names: str) -> None:
    """Hold the named locks until this session's transaction ends (commit or rollback), waiting for
    any other transaction that holds one of them: what must be checked and then written without
    a concurrent writer in between (an active-job count, whether an input image is still used)
    is done under one.

    PostgreSQL: a transaction-level advisory lock per name (taken in a fixed order, so two callers
    never deadlock). SQLite: the database's write lock, taken at once (`BEGIN IMMEDIATE`), which
    serializes every writer anyway; call this before the transaction's first write."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        if not connection.connection.dbapi_connection.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        return
    for key in sorted({int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
                       for name in names}):
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


class Database:
    """One engine and session factory per process; sessions are short and explicit."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that rolls back on error; callers commit what they mean to keep."""
        with self._sessions() as session:
            try:
                yield session
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


def with_retries(operation: Callable[[], T], *, seconds: float, what: str) -> T:
    """Run `operation` (which opens its own session), retrying while the database is unavailable,
    with exponential backoff (0.1 s doubling to 5 s) for at most `seconds`; then the error stands."""
    deadline, delay, failures = time.monotonic() + seconds, 0.1, 0
    while True:
        try:
            result = operation()
        except UNAVAILABLE as error:
            if not is_unavailable(error):
                raise
            failures += 1
            if time.monotonic() + delay > deadline:
                log.error("%s: database still unavailable after %d tries; giving up: %s", what, failures, error.orig or error)
                raise
            log.warning("%s: database unavailable (%s); retry %d in %.1fs", what,
                        str(getattr(error, "orig", None) or error).splitlines()[0], failures, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if failures:
            log.warning("%s: database reachable again after %d failed tries", what, failures)
        return result
