"""The admin dashboard under `/admin`: server-rendered pages for operators (not API clients).

`init_app` wires it into the API's Flask app: the session secret, the sign-in rate limit
(on the app's Flask-Limiter from `api.limits`: counted in Redis, so it holds across API
processes; skipped and logged while Redis is unreachable rather than locking every operator
out), and the two blueprints.
"""
from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from flask import Flask
from flask_limiter import Limiter

from api.admin import auth, blueprint, job_pages, keys, storage, system  # noqa: F401  (these add their routes)
from shared.config import Settings

log = logging.getLogger(__name__)
SESSION_LIFETIME = timedelta(hours=12)


def init_app(app: Flask, settings: Settings, limiter: Limiter) -> None:
    if settings.secret_key:
        app.secret_key = settings.secret_key
    else:
        log.warning("ATELIER_SECRET_KEY is not set: admin sessions last only as long as this process")
        app.secret_key = secrets.token_hex(32)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME)
    limiter.limit(settings.admin_signin_limit, key_func=auth.signin_key, methods=["POST"], deduct_when=auth.failed,
                  error_message="too many failed sign-ins; wait a minute and try again")(auth.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(blueprint.bp)
