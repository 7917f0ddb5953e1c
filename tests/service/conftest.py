"""Fixtures for the job service: real Redis servers, real databases, real Celery worker processes.
Only fixtures live here; the helpers they and the tests use are in helpers.py, fault actions in
faults.py.

- `make_redis` (session): `make_redis()` starts a private redis-server (a `RedisServer`) on a free
  port, stopped at the end of the session; `redis_server` (session) is the shared one.
- `database_url` (session, parametrised): a migrated SQLite file, and a fresh PostgreSQL
  database when ATELIER_TEST_POSTGRES_URL is set. Every test using it runs on both.
  `storage_dir` (session): the storage directory next to it.
- `postgres_url`: a fresh PostgreSQL database for one test (skipped without ATELIER_TEST_POSTGRES_URL).
- `s3_server` (session): a standalone S3-compatible server (moto's `moto_server`, an `S3Server`) on
  a free port with its bucket made, and `AWS_*` set so boto3 (here and in every process started
  after) finds it.
- `private_database`: a migrated SQLite database of the test's own, in a directory of its own.
- `settings`: small limits, Redis database 1, where no worker listens, so jobs stay queued.
- `make_app`: `make_app(settings)` is a Flask app in testing mode; every app it made has its
  database engine disposed when the test ends.
- `client_for`: `client_for(settings)` is `(client, auth)`: a test client of a new app on those
  settings and the Authorization header of a fresh API key.
- `app`, `client`: the Flask app on `settings` and its test client; `api_key`/`auth`: a fresh
  account's key and its Authorization header.
- `worker_settings`, `worker` (session): a Celery worker process on Redis database 0;
  `live_app`, `live_client`, `live_auth` talk to it.
- `spawn_worker` (session): `spawn_worker(settings, args, **options)` starts a `WorkerProcess`
  (options: `app`, `cwd`, `env`), stopped at the end of the session; `workers`: the same, stopped
  at the end of the test.
- `images` (session): tiny PNG bytes (`content`, `style`, `style2`).
- `operator`: the name of a new admin operator on `settings` (password `OPERATOR_PASSWORD`).
- `receiver`: a webhook `Receiver` on loopback, stopped at the end of the test.
- `live_stack` (session): `atelier run` itself on this backend (tests/service/live_stack.py), for
  the client library, the CLI and generated clients; `stack_key`: a new account's key on it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from api.app import create_app
from shared.config import Settings
from shared.migrate import upgrade
from tests.service.helpers import (RedisServer, S3Server, WorkerProcess, bearer, fresh_postgres, make_operator,
                                   make_settings, new_key, png)
from tests.service.webhook_receiver import Receiver


# ---- Redis and the database -------------------------------------------------------------------

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
    with fresh_postgres() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if not os.environ.get("ATELIER_TEST_POSTGRES_URL"):
        pytest.skip("ATELIER_TEST_POSTGRES_URL is not set (machines that share nothing share a database server)")
    with fresh_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    server.start()
    saved = {name: os.environ.get(name) for name in server.env()}
    os.environ.update(server.env())
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


@pytest.fixture(scope="session")
def storage_dir(database_url, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture
def private_database(tmp_path) -> str:
    """A migrated SQLite database of this test's own, in a directory of its own (the outage moves it)."""
    url = f"sqlite:///{tmp_path / 'db' / 'atelier.db'}"
    upgrade(url)
    return url


@pytest.fixture
def own_database(request, database_url) -> Iterator[str]:
    """A new, migrated database of this test's own on the backend under test (SQLite or
    PostgreSQL): no job or event of another test, and no other test's worker or beat on it."""
    if database_url.startswith("sqlite"):
        yield request.getfixturevalue("private_database")
        return
    with fresh_postgres() as url:
        yield url


# ---- the app, its clients and keys ------------------------------------------------------------

@pytest.fixture
def settings(database_url, redis_server, storage_dir) -> Settings:
    """No worker consumes Redis database 1: jobs submitted here stay queued."""
    return make_settings(database_url, redis_server.url(1), storage_dir)


@pytest.fixture
def make_app() -> Iterator[Callable]:
    """`make_app(settings)`: a Flask app in testing mode; each one's database engine is disposed at teardown."""
    apps = []

    def make(settings: Settings):
        app = create_app(settings)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["atelier"].db.dispose()


@pytest.fixture
def client_for(make_app) -> Callable:
    """`client_for(settings)`: `(client, auth)`, a test client of a new app on `settings` and the
    Authorization header of a fresh API key in that app's database."""
    def make(settings: Settings):
        return make_app(settings).test_client(), bearer(new_key(settings))
    return make


@pytest.fixture
def app(make_app, settings):
    return make_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def api_key(settings) -> str:
    return new_key(settings)


@pytest.fixture
def auth(api_key) -> dict[str, str]:
    return bearer(api_key)


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {"content": png(48, 36, 1), "style": png(32, 32, 2), "style2": png(40, 40, 3)}


@pytest.fixture
def operator(settings) -> str:
    """A new admin operator on `settings`; its password is `helpers.OPERATOR_PASSWORD`."""
    return make_operator(settings)


# ---- workers ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def spawn_worker(tmp_path_factory) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def spawn(settings: Settings, args: tuple[str, ...] = ("-Q", "gpu"), **options) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path_factory.mktemp("worker") / "worker.log", args, **options)
        workers.append(worker)
        return worker

    yield spawn
    for worker in workers:
        worker.stop()


@pytest.fixture
def workers(spawn_worker):
    """`spawn_worker`, but the workers stop when the test ends: none of them lingers to take the
    jobs (or, with beat, run the sweep over the database) of later tests."""
    started = []

    def spawn(settings, args=("-Q", "gpu"), **options):
        started.append(spawn_worker(settings, args, **options))
        return started[-1]
    yield spawn
    for worker in started:
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
def live_app(worker, worker_settings, make_app):
    return make_app(worker_settings)


@pytest.fixture
def live_client(live_app):
    return live_app.test_client()


@pytest.fixture
def live_auth(worker_settings) -> dict[str, str]:
    return bearer(new_key(worker_settings))


# ---- webhooks ---------------------------------------------------------------------------------

@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


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
