"""`/v1/openapi.json` and `/docs`, a self-contained HTML reference (no CDN, works offline)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template

from api.app import services
from api.openapi import build_spec

bp = Blueprint("docs", __name__, template_folder="templates")


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    return jsonify(build_spec(services().settings))


@bp.get("/docs")
def docs() -> str:
    spec = build_spec(services().settings)
    return render_template("docs.html", spec=spec, params=spec["components"]["schemas"]["JobParams"]["properties"])
