"""One delivery attempt: claim the event, sign it, POST it to a checked address, log the
outcome and schedule the retry.

- 2xx within `webhook_timeout_seconds`: delivered. 410 Gone: failed, no more retries; so too
  when no secret may sign it (the submitting key was revoked).
  Anything else (timeout, connection error, 3xx, 4xx, 5xx, a refused address, an answer that
  cannot be read): retried after the next delay of `webhook_retry_schedule` (with jitter), or
  after `Retry-After` on 429/503, until the schedule is used up. Every attempt is recorded: what
  a receiver answered is stored as PostgreSQL text takes it.
- Every attempt carries the event id as `webhook-id`, a fresh `webhook-timestamp`, and one
  `v1,` signature per secret of the submitting key (two during a rotation's grace).
- The connection goes to an address `targets.resolve` just checked, with the URL's host in
  the Host header and as the TLS server name (certificate checked against it); redirects are
  not followed.
- Short retries are sent to the broker with a countdown; longer ones are left to the sweep.
"""
from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import urllib3
from celery import Celery
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from shared import metrics
from shared.config import Settings
from shared.models import Job, WebhookAttempt, WebhookEvent, WebhookStatus, utcnow
from shared.services import Services
from shared.webhooks import outbox, signing, targets

log = logging.getLogger(__name__)

EXCERPT_BYTES = 1024
LEASE_MARGIN_SECONDS = 60.0      # an attempt holds its event for the timeout plus this
JITTER = 0.1                     # retry delays vary by up to ±10%
MAX_RETRY_AFTER_SECONDS = 86400.0
USER_AGENT = "Atelier-Webhooks/1.0"


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    latency_ms: int
    excerpt: str | None = None
    retry_after: float | None = None  # seconds, from a 429/503's Retry-After
    final: bool = False               # no retry can succeed

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_schedule(settings: Settings) -> tuple[float, ...]:
    """`ATELIER_WEBHOOK_RETRY_SCHEDULE`: the delays (seconds) before the 1st, 2nd, ... retry."""
    try:
        delays = tuple(float(part) for part in settings.webhook_retry_schedule.split(",") if part.strip())
    except ValueError:
        delays = (-1.0,)
    if any(d < 0 for d in delays):
        raise ValueError(f"ATELIER_WEBHOOK_RETRY_SCHEDULE={settings.webhook_retry_schedule!r}: "
                         "expected comma-separated non-negative seconds")
    return delays


def sign(keys: list[str], message_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers: one `v1,` signature per secret, space-separated."""
    return {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": " ".join(Webhook(key).sign(message_id, at, body) for key in keys)}


def post(target: targets.Target, headers: dict[str, str], body: bytes, timeout: float) -> Outcome:
    """POST to the first checked address that accepts a connection; never follows redirects."""
    started = time.monotonic()
    headers = headers | {"Host": target.host_header, "Content-Type": "application/json", "User-Agent": USER_AGENT}
    error: Exception | None = None
    for address in target.addresses:
        pool = _pool(target, str(address), timeout)
        try:
            response = pool.urlopen("POST", target.request_target, body=body, headers=headers, redirect=False,
                                    retries=False, preload_content=False, assert_same_host=False)
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
            error = exc
            pool.close()
            continue
        except urllib3.exceptions.HTTPError as exc:
            pool.close()
            return Outcome(None, _describe(exc), _ms(started))
        try:
            excerpt = response.read(EXCERPT_BYTES).decode("utf-8", errors="replace")
        except urllib3.exceptions.HTTPError as exc:
            return Outcome(response.status, _describe(exc), _ms(started))
        finally:
            response.release_conn()
            pool.close()
        retry_after = _retry_after(response.headers.get("Retry-After")) if response.status in (429, 503) else None
        return Outcome(response.status, None, _ms(started), excerpt or None, retry_after)
    return Outcome(None, _describe(error) if error else "no address to connect to", _ms(started))


def attempt(services: Services, celery: Celery, event_id: str) -> None:
    """Make the event's next attempt, if it is due and no other attempt holds it."""
    settings = services.settings
    with services.db.session() as session:
        if not _claim(session, event_id, settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS):
            return
        event = session.get(WebhookEvent, event_id)
        api_key_id = session.scalar(select(Job.api_key_id).where(Job.id == event.job_id))
        keys = signing.secrets_for(session, api_key_id) if api_key_id is not None else []
        url, body, number = event.url, event.payload, event.attempts + 1
    started_at = utcnow()
    outcome = _send(url, event_id, body, keys, settings) if keys else \
        Outcome(None, "not sent: no secret signs it (the API key that submitted the job was revoked)", 0,
                final=True)
    with services.db.session() as session:
        next_at = _record(session, event_id, number, url, started_at, outcome, settings)
    log.info("webhook %s attempt %d to %s: %s", event_id, number, url, outcome.status_code or outcome.error)
    if next_at is not None and next_at - utcnow() <= timedelta(seconds=settings.sweep_seconds):
        outbox.dispatch(services, celery, event_id, at=next_at)


def _send(url: str, event_id: str, body: str, keys: list[str], settings: Settings) -> Outcome:
    """The attempt's outcome. Anything unexpected on the way (a receiver's odd answer we fail to
    read) is a failed attempt too: raised, it would leave the event leased and unrecorded, to be
    sent again by every sweep."""
    started = time.monotonic()
    try:
        target = targets.resolve(url, targets.parse_networks(settings.webhook_allow_networks))
        return post(target, sign(keys, event_id, body, utcnow()), body.encode(), settings.webhook_timeout_seconds)
    except targets.RefusedURL as exc:
        return Outcome(None, f"refused: {exc}", _ms(started))
    except Exception as exc:
        log.exception("webhook %s: attempt to %s failed unexpectedly", event_id, url)
        return Outcome(None, _describe(exc), _ms(started))


def _claim(session: Session, event_id: str, lease_seconds: float) -> bool:
    now = utcnow()
    E = WebhookEvent
    result = session.execute(
        update(E).where(E.id == event_id, E.status == WebhookStatus.PENDING.value, E.next_attempt_at <= now,
                        or_(E.leased_until.is_(None), E.leased_until < now))
        .values(leased_until=now + timedelta(seconds=lease_seconds)).execution_options(synchronize_session=False))
    session.commit()
    return result.rowcount == 1


def _record(session: Session, event_id: str, number: int, url: str, started_at: datetime, outcome: Outcome,
            settings: Settings) -> datetime | None:
    """Log the attempt and move the event on; returns when the next attempt is due, if any."""
    event = session.get(WebhookEvent, event_id)
    if event is None:  # the job was deleted meanwhile
        return None
    session.add(WebhookAttempt(event_id=event_id, number=number, url=url, started_at=started_at,
                               status_code=outcome.status_code, latency_ms=outcome.latency_ms,
                               error=_storable(outcome.error and outcome.error[:500]),
                               response_excerpt=_storable(outcome.excerpt)))
    schedule = retry_schedule(settings)
    event.attempts, event.leased_until, event.next_attempt_at = number, None, None
    if outcome.delivered:
        event.status, event.failures = WebhookStatus.DELIVERED.value, 0
    elif outcome.status_code == 410 or outcome.final or event.failures >= len(schedule):
        event.status = WebhookStatus.FAILED.value
    else:
        delay = outcome.retry_after if outcome.retry_after is not None else \
            schedule[event.failures] * random.uniform(1 - JITTER, 1 + JITTER)
        event.failures += 1
        event.next_attempt_at = utcnow() + timedelta(seconds=delay)
    next_at = event.next_attempt_at
    session.commit()
    metrics.WEBHOOK_DELIVERIES.labels("delivered" if outcome.delivered else
                                      "retrying" if next_at is not None else "failed").inc()
    return next_at


def _pool(target: targets.Target, address: str, timeout: float) -> urllib3.HTTPConnectionPool:
    options = {"timeout": urllib3.Timeout(total=timeout), "retries": False, "maxsize": 1}
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(address, target.port, server_hostname=target.host,
                                           assert_hostname=target.host, cert_reqs="CERT_REQUIRED", **options)
    return urllib3.HTTPConnectionPool(address, target.port, **options)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # '²'.isdigit(), but float('²') raises
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max(0.0, (when - utcnow()).total_seconds()), MAX_RETRY_AFTER_SECONDS)


def _storable(text: str | None) -> str | None:
    """`text` as PostgreSQL text takes it: a receiver's answer may hold NUL characters (refused
    there) or, through an exception's message, lone surrogates (not encodable as UTF-8)."""
    if text is None:
        return None
    return text.replace("\x00", "").encode("utf-8", errors="replace").decode("utf-8")


def _describe(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    return f"{type(exc).__name__}: {reason}"[:500]


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
