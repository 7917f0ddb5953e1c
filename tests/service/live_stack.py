"""`atelier run` as a user starts it (API under gunicorn, a GPU worker, the maintenance worker with
beat), for the tests of the client library, the CLI and generated clients: on a free port, with
its own database (so its sweep never touches other tests' jobs), Redis and storage."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from sqlalchemy.engine import make_url

from api.stack import free_port
from shared.config import Settings
from tests.service.helpers import ROOT, RedisServer, fresh_postgres, wait_for


@contextmanager
def fresh_database(like: str, directory: Path) -> Iterator[str]:
    """A database of its own on the same backend as `like`."""
    if make_url(like).get_backend_name() == "sqlite":
        yield f"sqlite:///{directory / 'stack.db'}"
        return
    with fresh_postgres() as url:
        yield url


class LiveStack:
    """`python -m shared.cli run` in `directory`, its output in `directory/run.log`; `url` once ready."""

    def __init__(self, directory: Path, database_url: str, redis: RedisServer, **settings: str) -> None:
        self.directory, self.redis = directory, redis
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(database_url=database_url, redis_url=redis.url(0), storage_dir=directory / "storage")
        env = os.environ | self.settings.to_env() | {"ATELIER_PORT": str(self.port), "ATELIER_DEVICE": "cpu",
                                                     "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)} | settings
        for name in ("ATELIER_HOST", "ATELIER_URL", "ATELIER_KEY"):  # the defaults, as a new user has them
            env.pop(name, None)
        self.log_path = directory / "run.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "shared.cli", "run"], cwd=directory, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self._ready, timeout=120, interval=0.5, what="atelier run to be ready")
            wait_for(lambda: re.search(r"gpu@\S+ ready\.", self.output()), timeout=120, interval=0.5,
                     what="its GPU worker to be ready")
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"atelier run exited with {self.process.returncode}:\n{self.output()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False
