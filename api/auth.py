"""Bearer-key authentication for every `/v1` route; the account id scopes every query."""
from __future__ import annotations

from flask import Blueprint, g, request
from sqlalchemy import bindparam, select

from api import services
from api.errors import ProblemError
from shared.keys import hash_key
from shared.models import ApiKey

# the unrevoked key with this hash (shared.keys.live_key, as a plain query)
LIVE_KEY = select(ApiKey.id, ApiKey.account_id).where(ApiKey.key_hash == bindparam("key_hash"),
                                                      ApiKey.revoked_at.is_(None))

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="atelier"'}


def require_key(bp: Blueprint) -> None:
    bp.before_request(authenticate)


def authenticate() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(401, "Unauthorized", "send `Authorization: Bearer <api key>`", headers=CHALLENGE)
    # every request does this: two columns over a pooled connection, no ORM session or objects
    with services().db.engine.connect() as connection:
        key = connection.execute(LIVE_KEY, {"key_hash": hash_key(token.strip())}).first()
    if key is None:
        raise ProblemError(401, "Unauthorized", "unknown or revoked API key", headers=CHALLENGE)
    g.account_id, g.api_key_id = key.account_id, key.id


def account_id() -> int:
    return g.account_id


def api_key_id() -> int:
    return g.api_key_id
