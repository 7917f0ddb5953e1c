"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: its dependencies do)."""
from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from redis import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api import services
from api.errors import ProblemError

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    svc = services()
    down = []
    try:
        with svc.db.session() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("readiness: database unreachable: %s", exc)
        down.append("database")
    try:
        svc.redis.ping()
    except (RedisError, OSError) as exc:
        log.warning("readiness: redis unreachable: %s", exc)
        down.append("redis")
    if down:
        raise ProblemError(503, "Service Unavailable", f"unreachable: {', '.join(down)}", headers={"Retry-After": "5"})
    return jsonify(status="ready", database="ok", redis="ok")
