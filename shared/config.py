"""Service settings, read once from `ATELIER_*` environment variables.

The API, the Celery worker, Alembic and the `atelier` CLI all build their configuration
from the same `Settings`, so one environment describes one deployment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

PREFIX = "ATELIER_"


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/atelier.db"
    redis_url: str | None = None            # None: `atelier run` starts an embedded Redis
    storage_dir: Path = Path("var/storage")
    storage_url: str | None = None          # s3://bucket/prefix (endpoint, credentials: boto3's AWS_* ways), file:///path; unset: storage_dir
    storage_redirect_seconds: int = 0       # >0: results and snapshots answer 302 to a presigned URL valid this long (S3 only)
    host: str = "127.0.0.1"                 # the address `atelier run` serves the API on; 0.0.0.0 exposes it
    port: int = 8000
    device: str = "auto"                    # the engine's device on workers: auto | cpu | cuda[:N]
    max_batch: int = 8                      # most queued jobs of one shape a worker runs as one batch (1: none);
                                            # fewer when the device's free memory holds fewer (shared.capacity)
    # operator limits on what a job may ask for
    max_size: int = 1024
    max_iterations: int = 2000
    max_styles: int = 4
    max_upload_bytes: int = 20 * 2**20       # whole request body
    max_pixels: int = 25_000_000            # per uploaded image, checked from the header
    max_active_jobs: int = 20               # queued + running per account, else 429
    max_active_jobs_per_key: int = 10       # queued + running submitted with one API key, else 429
    submit_rate_limit: str = "60/minute"    # submissions per API key (Flask-Limiter syntax, counted in Redis)
    max_prefer_wait_seconds: int = 60       # longest `Prefer: wait=N` a submission may hold its request; 0: never
    # worker reliability
    max_attempts: int = 3                   # claims per job before it is failed
    lease_seconds: float = 60.0             # a running job whose lease is not renewed in this time is re-run
    visibility_timeout: int = 4 * 3600      # Redis broker redelivery; must exceed the longest job
    checkpoint_seconds: float = 30.0        # how often a running job saves its engine checkpoint
    progress_seconds: float = 1.0           # how often progress is written and cancellation checked
    sweep_seconds: float = 30.0             # how often the periodic sweep runs
    enqueue_grace_seconds: float = 30.0     # a queued job never handed to the broker for this long is re-sent
    database_retry_seconds: float = 120.0   # a worker retries a failed database write this long (backoff) before giving the job up
    sse_keepalive_seconds: float = 15.0
    # retention (shared.retention): a job's result, snapshots and checkpoint are removed this long
    # after it ended (0: kept for ever), unless its account has its own setting; the row stays
    retention_days: float = 30.0
    retention_batch_size: int = 100         # jobs one retention task clears; a full batch sends the next at once
    # webhooks (shared.webhooks)
    webhook_timeout_seconds: float = 10.0   # a 2xx must arrive within this, else the attempt failed
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"  # seconds before each retry (Standard Webhooks)
    webhook_allow_networks: str = ""        # comma-separated CIDRs a webhook may reach although not public
    webhook_secret_grace_seconds: float = 86400.0  # how long a rotated-out secret keeps signing
    # the admin dashboard
    secret_key: str | None = None           # signs session cookies; `atelier run` keeps one in var/secret_key
    admin_signin_limit: str = "5 per minute"  # failed sign-ins per client address and operator name
    # metrics (shared.metrics): /metrics answers an admin session or `Authorization: Bearer <metrics_token>`
    metrics_token: str | None = None
    worker_metrics_port: int = 9808         # `atelier worker` serves its workers' metrics here (0: not at all)
    # TLS in front (api.transport): clients reach the service over HTTPS through a proxy
    behind_https: bool = False              # trust the proxy's X-Forwarded-Proto/-For (one hop)
    secure_cookies: bool | None = None      # Secure session cookie and HSTS; None: as behind_https

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Defaults, overridden by `ATELIER_<FIELD>` variables, overridden by keyword arguments."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw, KINDS[str(f.type).split("|")[0].strip()])
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings in a child process (worker, API server)."""
        return {PREFIX + f.name.upper(): str(getattr(self, f.name))
                for f in fields(self) if getattr(self, f.name) is not None}


KINDS: dict[str, type] = {"str": str, "Path": Path, "int": int, "float": float, "bool": bool}
BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse(name: str, raw: str, kind: type) -> object:
    try:
        if kind is bool:
            return BOOLEANS[raw.strip().lower()]
        if kind in (int, float, Path):
            return kind(raw)
        return raw
    except (ValueError, KeyError):
        expected = "boolean (true or false)" if kind is bool else kind.__name__
        raise ValueError(f"{PREFIX}{name.upper()}={raw!r} is not a valid {expected}") from None
