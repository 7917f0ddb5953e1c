"""Sessions and CSRF for the dashboard.

The session cookie (Flask's, signed with ATELIER_SECRET_KEY) holds the operator's id and a
random CSRF token; every form carries the token and every POST must send it back: a POST
without one is refused with 400, one with a wrong token with 403.
"""
from __future__ import annotations

import hmac
import secrets

from flask import Blueprint, Response, abort, g, jsonify, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException

from api.app import services
from shared.models import Operator

CSRF_FIELD = "csrf_token"


def csrf_token() -> str:
    """The session's token, made on first use (templates call it as `csrf_token()`)."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    sent = request.form.get(CSRF_FIELD)
    if not sent:
        abort(400, "The form's CSRF token is missing; reload the page and try again.")
    expected = session.get(CSRF_FIELD)
    if expected is None or not hmac.compare_digest(sent, expected):
        abort(403, "The form's CSRF token is not this session's; reload the page and try again.")


def sign_in(operator: Operator) -> None:
    """A fresh session (a new CSRF token too), so nothing from before sign-in carries over."""
    session.clear()
    session.permanent = True
    session["operator_id"] = operator.id
    csrf_token()


def load_operator() -> Response | None:
    """Redirect pages (answer 401 to the JSON the pages poll) when no operator is signed in.
    The stylesheet and scripts are public: the sign-in page needs them too."""
    if request.endpoint == "admin.static":
        return None
    operator_id = session.get("operator_id")
    operator = None
    if operator_id is not None:
        with services().db.session() as db:
            operator = db.get(Operator, operator_id)
    if operator is None:
        session.pop("operator_id", None)
        if request.path.endswith(".json"):
            response = jsonify(error="sign in at /admin/sign-in")
            response.status_code = 401
            return response
        next_path = request.full_path if request.method == "GET" else url_for("admin.jobs")
        return redirect(url_for("admin_auth.sign_in_form", next=next_path.rstrip("?")), 303)
    g.operator = operator
    return None


def error_page(exc: HTTPException) -> tuple[str, int]:
    return render_template("admin/error.html", error=exc), exc.code or 500


def protect(bp: Blueprint, *, sign_in_required: bool) -> None:
    if sign_in_required:
        bp.before_request(load_operator)
    bp.before_request(check_csrf)
    bp.errorhandler(HTTPException)(error_page)
    bp.context_processor(lambda: {"csrf_token": csrf_token})
