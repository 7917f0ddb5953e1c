"""API keys: high-entropy random tokens, of which only the sha256 is kept."""
from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Account, ApiKey

PREFIX = "atl_"


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(session: Session, account_name: str) -> str:
    """A new key for the account `account_name` (created if new); returns the only copy of the token."""
    account = session.scalar(select(Account).where(Account.name == account_name))
    if account is None:
        account = Account(name=account_name)
        session.add(account)
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(account=account, key_hash=hash_key(token), prefix=token[: len(PREFIX) + 6]))
    session.commit()
    return token


def live_key(session: Session, token: str) -> ApiKey | None:
    """The unrevoked key with this token, or None; its `account_id` scopes what the caller sees."""
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None)))
