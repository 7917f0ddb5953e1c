"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: its dependencies do)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.app import services
from api.errors import ProblemError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    ready = services().readiness()
    down = [name for name, state in ready.items() if state != "ok"]
    if down:
        raise ProblemError(503, "Service Unavailable", f"unreachable: {', '.join(down)}", headers={"Retry-After": "5"})
    return jsonify(status="ready", **ready)
