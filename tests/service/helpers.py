"""Helpers for the service tests: plain functions, classes and constants, no fixtures (those are
in conftest.py, fault actions in faults.py). Test modules import from here, never from conftest.py
or from one another.

- `ROOT`: the repository root, where worker and CLI subprocesses run. (`free_port` lives in
  `api.stack`: import it from there.)
- `wait_for(predicate, timeout, interval, what)`: poll until `predicate()` is truthy.
- `RedisServer(directory)`: a throwaway redis-server on a free port: `url(db)`, `start()`, `stop()`.
- `S3Server(log_path)`: `moto_server` on a free port: `endpoint`, `env()`, `client()`, `keys(prefix)`,
  `start()`, `stop()`; `fresh_postgres()`: a context manager giving a new migrated PostgreSQL database.
- `make_settings(database_url, redis_url, storage_dir, **overrides)`: `Settings` with small test limits.
- `new_key(settings, name=None)`: a fresh API key (of a new account, or of account `name`);
  `bearer(token)`: its `Authorization` header.
- `png(width, height, seed)`: PNG bytes; `submit(client, auth, images, params, styles, headers)`: POST a job.
- `TERMINAL`: the statuses a job ends in; `wait_status(client, auth, job_id, statuses, timeout)`:
  poll a job until its status is one of `statuses`.
- `wait_checkpointed(services, job_id, iteration)`: until a running job has a checkpoint past
  `iteration`; `wait_resent(services, job_id)`: until the sweep re-sends a job whose lease expired.
- `stream_events(response, until)`: the (event, data) pairs of a streamed text/event-stream response,
  as they come; `read_events(response, until)`: all of them, up to its end.
- `PROBLEM`, `assert_problem(response, status, field=None)`: an RFC 9457 problem+json answer.
- `WorkerProcess(settings, log_path, args)`: a real Celery worker process in its own process group.
- `OPERATOR_PASSWORD`, `make_operator(settings)`: an admin dashboard operator; returns its name.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import redis
from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import create_engine, text

from api.stack import free_port
from shared import keys
from shared.broker import create_celery
from shared.config import Settings
from shared.db import normalize_url
from shared.migrate import upgrade
from shared.models import Job
from shared.operators import create_operator
from shared.services import Services
from worker.sweep import sweep

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = os.environ.get("ATELIER_TEST_REDIS_SERVER", "/usr/bin/redis-server")
TERMINAL = {"succeeded", "failed", "canceled"}
PROBLEM = "application/problem+json"
OPERATOR_PASSWORD = "correct horse battery"


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


# ---- Redis ------------------------------------------------------------------------------------

class RedisServer:
    """A throwaway redis-server that keeps nothing on disk; `faults.stop_redis` and
    `faults.start_redis` use stop() and start() to simulate outages."""

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


# ---- settings, keys, operators ----------------------------------------------------------------

class S3Server:
    """`moto_server` on loopback: a real HTTP server speaking the S3 API, in memory; `stop()` and
    `start()` simulate an outage (it keeps nothing: `start()` makes the bucket again)."""

    BUCKET = "atelier-test"

    def __init__(self, log_path: Path) -> None:
        self.port, self.log_path = free_port(), log_path
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """How boto3 finds it: the usual AWS_* variables (two tries, so an outage is noticed fast)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                            region_name="us-east-1")

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                             str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        client = self.client()
        wait_for(lambda: _answers(client), timeout=30, what="moto_server to start")
        client.create_bucket(Bucket=self.BUCKET)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _answers(client) -> bool:
    try:
        client.list_buckets()
        return True
    except Exception:  # botocore's connection errors while the server starts
        return False


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new, migrated database on ATELIER_TEST_POSTGRES_URL's server, dropped afterwards."""
    admin_url = normalize_url(os.environ["ATELIER_TEST_POSTGRES_URL"])
    name = f"atelier_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_settings(database_url: str, redis_url: str, storage_dir: Path, **overrides) -> Settings:
    values = dict(database_url=database_url, redis_url=redis_url, storage_dir=storage_dir, device="cpu",
                  max_size=128, max_iterations=1000, max_upload_bytes=512 * 1024, max_pixels=1_000_000,
                  max_active_jobs=8, lease_seconds=3.0, progress_seconds=0.2, checkpoint_seconds=0.3,
                  sse_keepalive_seconds=1.0, enqueue_grace_seconds=0.0)
    return Settings(**(values | overrides))


def new_key(settings: Settings, name: str | None = None) -> str:
    services = Services(settings)
    with services.db.session() as session:
        token = keys.create_key(session, name or f"test-{uuid.uuid4().hex[:8]}")
    services.db.dispose()
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_operator(settings: Settings) -> str:
    """A new admin operator with `OPERATOR_PASSWORD`; returns its name."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    services = Services(settings)
    with services.db.session() as session:
        create_operator(session, name, OPERATOR_PASSWORD)
    services.db.dispose()
    return name


# ---- images and jobs --------------------------------------------------------------------------

def metrics_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A multiprocess metrics directory, and the environment that makes workers write into it."""
    path = tmp_path / "metrics"
    path.mkdir()
    return path, {"PROMETHEUS_MULTIPROC_DIR": str(path)}


def metric(path: Path, name: str, **labels: str) -> float | None:
    """One sample summed over the processes that wrote into the multiprocess directory `path`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    return registry.get_sample_value(name, labels)


def png(width: int, height: int, seed: int) -> bytes:
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7 + seed * 31) % 256, (y * 11 + seed * 17) % 256, ((x ^ y) * 13 + seed) % 256)
                   for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def submit(client, auth: dict, images: dict, params: dict | None = None, styles: tuple[str, ...] = ("style",),
           headers: dict | None = None):
    data = {"content": (io.BytesIO(images["content"]), "content.png"),
            "style": [(io.BytesIO(images[s]), f"{s}.png") for s in styles]}
    if params is not None:
        data["params"] = json.dumps(params)
    return client.post("/v1/jobs", data=data, headers=auth | (headers or {}), content_type="multipart/form-data")


def wait_status(client, auth: dict, job_id: str, statuses: set[str], timeout: float = 90.0) -> dict:
    def current():
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
        return job if job["status"] in statuses else None
    return wait_for(current, timeout=timeout, interval=0.1, what=f"job {job_id} to reach {statuses}")


def wait_checkpointed(services: Services, job_id: str, iteration: int = 5, timeout: float = 90.0) -> int:
    """Wait until the running job has a checkpoint recorded and has reached `iteration`; returns
    the iteration its progress shows then."""
    def progressed() -> int:
        with services.db.session() as session:
            job = session.get(Job, job_id)
            done = (job.progress or {}).get("iteration", 0)
            return done if job.checkpoint_key is not None and done >= iteration else 0
    return wait_for(progressed, timeout=timeout, what=f"job {job_id} to checkpoint past iteration {iteration}")


def wait_resent(services: Services, job_id: str) -> None:
    """Run the sweep until it re-sends `job_id` (its worker gone, its lease expired)."""
    celery = create_celery(services.settings)
    wait_for(lambda: job_id in sweep(services, celery).resent, timeout=services.settings.lease_seconds + 15,
             interval=0.5, what=f"the sweep to re-send job {job_id} once its lease expired")


def stream_events(response, until: float = 90.0) -> Iterator[tuple[str, dict]]:
    """Parse a text/event-stream body as it streams: each (event, data) as it comes."""
    buffer, deadline = "", time.monotonic() + until
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
            if lines:
                yield lines["event"], json.loads(lines["data"])
        assert time.monotonic() < deadline, "event stream did not end"


def read_events(response, until: float = 90.0) -> list[tuple[str, dict]]:
    """`stream_events` up to the stream's end."""
    return list(stream_events(response, until))


def assert_problem(response, status: int, field: str | None = None) -> dict:
    """The response is an RFC 9457 problem with this status (naming `field`, if given); returns its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["status"] == status and body["title"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
        assert field in body["detail"]
    return body


# ---- workers ----------------------------------------------------------------------------------

class WorkerProcess:
    """`celery -A worker.celery_app worker -Q gpu` as in production (prefork, one child), in its own
    process group so a test can kill it like a crashed machine (`faults.kill_worker`). `args`
    replaces `-Q gpu`, e.g. to also consume `maintenance` and run the periodic sweeps (`--beat`);
    `app` is the Celery app module (`worker.maintenance_app`: the torch-free maintenance worker);
    `cwd` and `env` (added to the settings' variables) place it, e.g. in an empty directory of its own."""

    def __init__(self, settings: Settings, log_path: Path, args: tuple[str, ...] = ("-Q", "gpu"),
                 app: str = "worker.celery_app", cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
        self.settings, self.log_path = settings, log_path
        # one intra-op thread: tiny test images gain nothing from more, and the suite shares the CPU
        env = os.environ | settings.to_env() | {"OMP_NUM_THREADS": "1"} | (env or {})
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", *args, "--concurrency", "1",
             "--loglevel", "INFO", "-n", f"test-{uuid.uuid4().hex[:8]}@%h", "--without-mingle", "--without-gossip"],
            cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
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
