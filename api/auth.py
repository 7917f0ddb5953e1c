"""Bearer-key authentication for every `/v1` route; the account id scopes every query."""
from __future__ import annotations

from flask import Blueprint, g, request

from api import services
from api.errors import ProblemError
from shared.keys import account_for

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="atelier"'}


def require_key(bp: Blueprint) -> None:
    bp.before_request(authenticate)


def authenticate() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(401, "Unauthorized", "send `Authorization: Bearer <api key>`", headers=CHALLENGE)
    with services().db.session() as session:
        account_id = account_for(session, token.strip())
    if account_id is None:
        raise ProblemError(401, "Unauthorized", "unknown or revoked API key", headers=CHALLENGE)
    g.account_id = account_id


def account_id() -> int:
    return g.account_id
