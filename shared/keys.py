"""API keys: high-entropy random tokens, of which only the sha256 is kept."""
from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import Connection, Row, bindparam, select, update
from sqlalchemy.orm import Session

from shared.db import lock
from shared.models import Account, ApiKey, utcnow

PREFIX = "atl_"
MAX_ACCOUNT_NAME = 100


class AccountNameError(ValueError):
    """The account name cannot be stored: empty, too long, or with control characters (NUL breaks PostgreSQL text)."""


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def account_name(text: str) -> str:
    """`text` as an account's name: without edge whitespace, which no one sees or types back (an
    admin page's owner filter must match it exactly); `AccountNameError` if it cannot be one."""
    name = text.strip()
    if not 1 <= len(name) <= MAX_ACCOUNT_NAME or not name.isprintable():
        raise AccountNameError(f"the account name must be 1 to {MAX_ACCOUNT_NAME} printable characters")
    return name


def create_key(session: Session, name: str) -> str:
    """A new key for the account `account_name(name)` (created if new); returns the only copy of the token."""
    name = account_name(name)
    lock(session, f"account:{name}")  # two first keys of a new account at once: one creates it, the other finds it
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        account = Account(name=name)
        session.add(account)
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(account=account, key_hash=hash_key(token), prefix=token[: len(PREFIX) + 6]))
    session.commit()
    return token


# every API request runs this: two columns, no ORM objects
LIVE_KEY = select(ApiKey.id, ApiKey.account_id).where(ApiKey.key_hash == bindparam("key_hash"),
                                                      ApiKey.revoked_at.is_(None))


def live_key(connection: Connection | Session, token: str) -> Row | None:
    """The unrevoked key with this token (`id`, `account_id`), or None; its account scopes what
    the caller sees."""
    return connection.execute(LIVE_KEY, {"key_hash": hash_key(token)}).first()


def revoke(session: Session, key_id: int) -> bool:
    """Refuse the key from now on, and forget its webhook secrets: they no longer sign anything
    (a key is revoked when it may have leaked, and its secret was handed out with it). False if
    it was already revoked."""
    revoked = session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                              .values(revoked_at=utcnow(), webhook_secret=None, previous_webhook_secret=None,
                                      previous_webhook_secret_expires_at=None)
                              .execution_options(synchronize_session=False)).rowcount
    session.commit()
    return revoked == 1
