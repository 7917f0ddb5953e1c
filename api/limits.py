"""Per-API-key abuse limits on `POST /v1/jobs`.

- A submission rate (`ATELIER_SUBMIT_RATE_LIMIT`, Flask-Limiter syntax such as `60/minute`),
  counted in Redis so every API process shares one count, per API key (after authentication:
  unknown keys are 401 and count nothing). Beyond it: `429` problem with `Retry-After` (seconds).
- The cap on a key's queued + running jobs (`ATELIER_MAX_ACTIVE_JOBS_PER_KEY`) is checked where
  the job is created (`api.jobs`), next to the per-account cap.

If Redis is unreachable the rate limit is skipped (and logged), never a 500: the submission
itself is safe in SQL, and the active-job caps still hold.
"""
from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter

from shared.config import Settings
from shared.keys import hash_key

SUBMIT_ENDPOINT = "jobs.submit"


def _key() -> str:
    """The caller's key by (a prefix of) its hash: already authenticated here, and unique across
    databases, unlike its row id; the plaintext never reaches Redis."""
    token = request.headers["Authorization"].partition(" ")[2].strip()
    return "key:" + hash_key(token)[:32]


def init_app(app: Flask, settings: Settings) -> Limiter:
    storage = {"storage_uri": settings.redis_url,
               "storage_options": {"socket_connect_timeout": 2, "socket_timeout": 2}} if settings.redis_url else {}
    limiter = Limiter(_key, app=app, key_prefix="atelier-api", strategy="moving-window", headers_enabled=True,
                      retry_after="delta-seconds", swallow_errors=True, **storage)
    # the limits are on POSTs only: polls and pages skip the limiter's per-request lookups
    limiter.request_filter(lambda: request.method in ("GET", "HEAD", "OPTIONS"))
    # wrap this app's view only (not the module's function): each app has its own limiter and storage
    view = app.view_functions[SUBMIT_ENDPOINT]
    app.view_functions[SUBMIT_ENDPOINT] = limiter.limit(
        settings.submit_rate_limit, error_message=f"too many submissions with this API key (limit {settings.submit_rate_limit}); "
                                                  "wait for `Retry-After` seconds")(view)
    return limiter
