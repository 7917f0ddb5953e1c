"""Bearer-key authentication for every `/v1` route; the account id scopes every query."""
from __future__ import annotations

from flask import Blueprint, g, request

from api.app import services
from api.errors import ProblemError
from shared.keys import live_key

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="atelier"'}


def require_key(bp: Blueprint) -> None:
    bp.before_request(authenticate)


def authenticate() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(401, "Unauthorized", "send `Authorization: Bearer <api key>`", headers=CHALLENGE)
    with services().db.engine.connect() as connection:  # a pooled connection, no ORM session
        key = live_key(connection, token.strip())
    if key is None:
        raise ProblemError(401, "Unauthorized", "unknown or revoked API key", headers=CHALLENGE)
    g.account_id, g.api_key_id = key.account_id, key.id


def account_id() -> int:
    return g.account_id


def api_key_id() -> int:
    return g.api_key_id
