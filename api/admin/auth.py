"""Signing in and out. Failed sign-ins are rate-limited per client address and operator name
(see `init_app`): a correct password does not count against the limit."""
from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from flask_limiter.util import get_remote_address

from api.app import services
from api.admin.security import protect, sign_in
from shared.operators import authenticate

bp = Blueprint("admin_auth", __name__, url_prefix="/admin", template_folder="templates")
protect(bp, sign_in_required=False)


def signin_key() -> str:
    return f"{get_remote_address()}|{request.form.get('name', '').strip().lower()}"


def failed(response: Response) -> bool:
    return response.status_code != 303


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return url_for("admin.jobs")


@bp.get("/sign-in")
def sign_in_form() -> str:
    return render_template("admin/sign_in.html", next=request.args.get("next", ""), error=None)


@bp.post("/sign-in")
def sign_in_post() -> Response | tuple[str, int]:
    name, password = request.form.get("name", ""), request.form.get("password", "")
    with services().db.session() as db:
        operator = authenticate(db, name, password)
    if operator is None:
        return render_template("admin/sign_in.html", next=request.form.get("next", ""), name=name,
                               error="Wrong name or password."), 401
    sign_in(operator)
    return redirect(safe_next(request.form.get("next")), 303)


@bp.post("/sign-out")
def sign_out() -> Response:
    session.clear()
    return redirect(url_for("admin_auth.sign_in_form"), 303)
