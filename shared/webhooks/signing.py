"""Per-API-key webhook signing secrets (`whsec_` + base64 of 32 random bytes).

They are stored in the clear (unlike API keys, which are only hashed): signing needs the
secret itself. A key gets its secret on first use, `atelier keys create` included. Rotating
keeps the old secret signing next to the new one for `webhook_secret_grace_seconds`, so
receivers can switch over without dropping deliveries. A revoked key's secrets are forgotten
(`shared.keys.revoke`) and it gets no new one: deliveries for its jobs are signed by nothing.
"""
from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import ApiKey, utcnow

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="`whsec_...`: verify deliveries for jobs submitted with this API key.")
    previous_expires_at: datetime | None = Field(
        description="After a rotation, the previous secret also signs deliveries until then.")


def current(session: Session, api_key_id: int) -> WebhookSecretOut:
    """The key's secret, created (compare-and-set, so concurrent callers agree) if it has none."""
    if session.scalar(select(ApiKey.webhook_secret).where(ApiKey.id == api_key_id)) is None:
        session.execute(update(ApiKey).where(ApiKey.id == api_key_id, ApiKey.webhook_secret.is_(None))
                        .values(webhook_secret=new_secret()).execution_options(synchronize_session=False))
        session.commit()
    return _state(session, api_key_id)


def rotate(session: Session, api_key_id: int, grace_seconds: float) -> WebhookSecretOut:
    """A new secret; the one it replaces keeps signing for `grace_seconds`."""
    old = current(session, api_key_id).secret
    session.execute(update(ApiKey).where(ApiKey.id == api_key_id, ApiKey.webhook_secret == old)
                    .values(webhook_secret=new_secret(), previous_webhook_secret=old,
                            previous_webhook_secret_expires_at=utcnow() + timedelta(seconds=grace_seconds))
                    .execution_options(synchronize_session=False))
    session.commit()
    return _state(session, api_key_id)


def secrets_for(session: Session, api_key_id: int) -> list[str]:
    """Every secret that signs a delivery now: the current one, and the previous during its grace;
    none for a revoked key."""
    if session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == api_key_id)) is not None:
        return []
    current(session, api_key_id)
    secret, previous, expires = session.execute(
        select(ApiKey.webhook_secret, ApiKey.previous_webhook_secret, ApiKey.previous_webhook_secret_expires_at)
        .where(ApiKey.id == api_key_id)).one()
    return [secret, previous] if previous is not None and expires is not None and expires > utcnow() else [secret]


def _state(session: Session, api_key_id: int) -> WebhookSecretOut:
    secret, expires = session.execute(select(ApiKey.webhook_secret, ApiKey.previous_webhook_secret_expires_at)
                                      .where(ApiKey.id == api_key_id)).one()
    in_grace = expires is not None and expires > utcnow()
    return WebhookSecretOut(secret=secret, previous_expires_at=expires if in_grace else None)
