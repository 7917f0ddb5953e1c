"""The API keys page: every account's keys with their job counts; create (shown once) and revoke."""
from __future__ import annotations

from flask import Response, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select

from api.app import services
from api.admin.blueprint import bp
from shared import keys as api_keys
from shared.models import Account, ApiKey, Job


def _render(new_key: str | None = None, account: str = "") -> str:
    with services().db.session() as db:
        counts = dict(db.execute(select(Job.api_key_id, func.count()).where(Job.api_key_id.is_not(None))
                                 .group_by(Job.api_key_id)).all())
        rows = db.execute(select(ApiKey, Account.name).join(Account, Account.id == ApiKey.account_id)
                          .order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc())).all()
        keys = [{"key": key, "account": name, "jobs": counts.get(key.id, 0)} for key, name in rows]
    return render_template("admin/keys.html", keys=keys, new_key=new_key, account=account)


@bp.get("/keys")
def keys() -> str:
    return _render()


@bp.post("/keys")
def create_key() -> str:
    """Renders the new key in the response itself (never a redirect): it is shown this once."""
    try:
        account = api_keys.account_name(request.form.get("account", ""))
    except api_keys.AccountNameError as exc:
        abort(400, f"Not created: {exc}.")
    with services().db.session() as db:
        token = api_keys.create_key(db, account)
    return _render(new_key=token, account=account)


@bp.post("/keys/<int(max=2147483647):key_id>/revoke")
def revoke_key(key_id: int) -> Response:
    with services().db.session() as db:
        prefix = db.scalar(select(ApiKey.prefix).where(ApiKey.id == key_id))
        if prefix is None:
            abort(404, f"There is no key {key_id}.")
        api_keys.revoke(db, key_id)
    flash(f"Revoked key {prefix}…; requests with it are refused from now on, and its webhook secret signs nothing.")
    return redirect(url_for("admin.keys"), 303)
