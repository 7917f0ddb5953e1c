"""`/v1/openapi.json` and `/docs`, a self-contained HTML reference (no CDN, works offline)."""
from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, render_template
from markupsafe import Markup, escape

from api.app import services
from api.openapi import build_spec

bp = Blueprint("docs", __name__, template_folder="templates")
CODE_SPAN = re.compile(r"`([^`]+)`")


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    return jsonify(build_spec(services().settings))


@bp.get("/docs")
def docs() -> str:
    spec = build_spec(services().settings)
    return render_template("docs.html", spec=spec, params=spec["components"]["schemas"]["JobParams"]["properties"])


@bp.app_template_filter("code_spans")
def code_spans(text: str | None) -> Markup:
    """The document's descriptions as HTML: escaped, then their `backtick` spans (the only Markdown
    they use) as <code>. Escaping first keeps it safe: a backtick is not a character escaping changes."""
    return Markup(CODE_SPAN.sub(r"<code>\1</code>", str(escape(text or ""))))
