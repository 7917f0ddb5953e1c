"""Fixtures for the job service: real Redis servers, real databases, real Celery worker processes.

- `redis_server` (session): a private redis-server on a free port; `make_redis()` starts more,
  each a `RedisServer` with `stop()`/`start()` for outage tests.
- `database_url` (session, parametrised): a migrated SQLite file, and a fresh PostgreSQL
  database when ATELIER_TEST_POSTGRES_URL is set. Every test using it runs on both.
- `settings`: small limits, Redis database 1, where no worker listens, so jobs stay queued.
- `app`, `client`: the Flask app on `settings`; `api_key`/`auth` (a fresh account per test).
- `worker_settings`, `worker` (session): a Celery worker process on Redis database 0;
  `live_app`, `live_client` talk to it. `spawn_worker(settings)` starts more (and cleans up).
- `images`: tiny PNG bytes (`content`, `style`, `style2`); `submit(client, auth, ...)` posts a job.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from PIL import Image
from sqlalchemy import create_engine, text

from api.app import create_app
from shared import keys
from shared.config import Settings
from shared.db import normalize_url
from shared.migrate import upgrade
from shared.services import Services

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = os.environ.get("ATELIER_TEST_REDIS_SERVER", "/usr/bin/redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Poll until `predicate()` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A throwaway redis-server that keeps nothing on disk; stop() and start() simulate outages."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_for(lambda: _pings(client), timeout=10, what="redis-server to start")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="session")
def make_redis(tmp_path_factory) -> Iterator[Callable[[], RedisServer]]:
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(make_redis) -> RedisServer:
    return make_redis()


def _backends() -> list:
    postgres = pytest.mark.skipif(not os.environ.get("ATELIER_TEST_POSTGRES_URL"),
                                  reason="ATELIER_TEST_POSTGRES_URL is not set")
    return ["sqlite", pytest.param("postgresql", marks=postgres)]


@pytest.fixture(scope="session", params=_backends())
def database_url(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'atelier.db'}"
        upgrade(url)
        yield url
        return
    admin_url = normalize_url(os.environ["ATELIER_TEST_POSTGRES_URL"])
    name = f"atelier_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def make_settings(database_url: str, redis_url: str, storage_dir: Path, **overrides) -> Settings:
    values = dict(database_url=database_url, redis_url=redis_url, storage_dir=storage_dir, device="cpu",
                  max_size=128, max_iterations=1000, max_upload_bytes=512 * 1024, max_pixels=1_000_000,
                  max_active_jobs=8, lease_seconds=3.0, progress_seconds=0.2, checkpoint_seconds=0.3,
                  sse_keepalive_seconds=1.0, enqueue_grace_seconds=0.0)
    return Settings(**(values | overrides))


@pytest.fixture(scope="session")
def storage_dir(database_url, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture
def settings(database_url, redis_server, storage_dir) -> Settings:
    """No worker consumes Redis database 1: jobs submitted here stay queued."""
    return make_settings(database_url, redis_server.url(1), storage_dir)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["atelier"].db.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


def new_key(settings: Settings, name: str | None = None) -> str:
    services = Services(settings)
    with services.db.session() as session:
        token = keys.create_key(session, name or f"test-{uuid.uuid4().hex[:8]}")
    services.db.dispose()
    return token


@pytest.fixture
def api_key(settings) -> str:
    return new_key(settings)


@pytest.fixture
def auth(api_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


# ---- images -----------------------------------------------------------------------------------

def png(width: int, height: int, seed: int) -> bytes:
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7 + seed * 31) % 256, (y * 11 + seed * 17) % 256, ((x ^ y) * 13 + seed) % 256)
                   for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {"content": png(48, 36, 1), "style": png(32, 32, 2), "style2": png(40, 40, 3)}


def submit(client, auth: dict, images: dict, params: dict | None = None, styles: tuple[str, ...] = ("style",),
           headers: dict | None = None):
    data = {"content": (io.BytesIO(images["content"]), "content.png"),
            "style": [(io.BytesIO(images[s]), f"{s}.png") for s in styles]}
    if params is not None:
        data["params"] = json.dumps(params)
    return client.post("/v1/jobs", data=data, headers=auth | (headers or {}), content_type="multipart/form-data")


# ---- workers ----------------------------------------------------------------------------------

class WorkerProcess:
    """`celery -A worker.celery_app worker -Q gpu` as in production (prefork, one child), in its own
    process group so a test can kill it like a crashed machine. `args` replaces `-Q gpu`, e.g. to
    also consume `maintenance` and run the periodic sweeps (`--beat`)."""

    def __init__(self, settings: Settings, log_path: Path, args: tuple[str, ...] = ("-Q", "gpu")) -> None:
        self.settings, self.log_path = settings, log_path
        # one intra-op thread: tiny test images gain nothing from more, and the suite shares the CPU
        env = os.environ | settings.to_env() | {"OMP_NUM_THREADS": "1"}
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", *args, "--concurrency", "1",
             "--loglevel", "INFO", "-n", f"test-{uuid.uuid4().hex[:8]}@%h", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: b" ready." in log_path.read_bytes() or self.process.poll() is not None,
                 timeout=90, interval=0.2, what="the celery worker to start")
        if self.process.poll() is not None:
            raise RuntimeError(f"celery worker exited:\n{log_path.read_text()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker (parent and pool child): nothing gets to clean up."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture(scope="session")
def spawn_worker(tmp_path_factory) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def spawn(settings: Settings, args: tuple[str, ...] = ("-Q", "gpu")) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path_factory.mktemp("worker") / "worker.log", args)
        workers.append(worker)
        return worker

    yield spawn
    for worker in workers:
        worker.stop()


@pytest.fixture(scope="session")
def worker_settings(database_url, redis_server, storage_dir) -> Settings:
    return make_settings(database_url, redis_server.url(0), storage_dir)


@pytest.fixture(scope="session")
def worker(worker_settings, spawn_worker) -> Iterator[WorkerProcess]:
    process = spawn_worker(worker_settings)
    yield process
    process.stop()  # before the next backend's worker starts on the same queue


@pytest.fixture
def live_app(worker, worker_settings):
    app = create_app(worker_settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["atelier"].db.dispose()


@pytest.fixture
def live_client(live_app):
    return live_app.test_client()


@pytest.fixture
def live_auth(worker_settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(worker_settings)}"}


def wait_status(client, auth: dict, job_id: str, statuses: set[str], timeout: float = 90.0) -> dict:
    def current():
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
        return job if job["status"] in statuses else None
    return wait_for(current, timeout=timeout, interval=0.1, what=f"job {job_id} to reach {statuses}")


@pytest.fixture
def workers(spawn_worker):
    """`spawn_worker`, but the workers stop when the test ends: none of them lingers to take the
    jobs (or, with beat, run the sweep over the database) of later tests."""
    started = []

    def spawn(settings, args=("-Q", "gpu")):
        started.append(spawn_worker(settings, args))
        return started[-1]
    yield spawn
    for worker in started:
        worker.stop()


@pytest.fixture
def private_database(tmp_path) -> str:
    """A migrated SQLite database of this test's own, in a directory of its own (the outage moves it)."""
    url = f"sqlite:///{tmp_path / 'db' / 'atelier.db'}"
    upgrade(url)
    return url


# ---- the whole stack, as `atelier run` starts it ------------------------------------------------

@pytest.fixture(scope="session")
def live_stack(database_url, make_redis, tmp_path_factory):
    """`atelier run` on this backend (tests/service/live_stack.py), shared by the tests of the client
    library, the CLI and generated clients. Small limits; 3 submissions per 2 s per key, so a
    test can meet a 429 quickly."""
    from tests.service.live_stack import LiveStack, fresh_database

    directory = tmp_path_factory.mktemp("stack")
    with fresh_database(database_url, directory) as url:
        stack = LiveStack(directory, url, make_redis(), ATELIER_MAX_SIZE="256", ATELIER_MAX_ITERATIONS="1000",
                          ATELIER_PROGRESS_SECONDS="0.2", ATELIER_SSE_KEEPALIVE_SECONDS="1",
                          ATELIER_SUBMIT_RATE_LIMIT="3 per 2 seconds")
        yield stack
        stack.stop()


@pytest.fixture
def stack_key(live_stack) -> str:
    """A key of a new account on `live_stack`."""
    return new_key(live_stack.settings)
