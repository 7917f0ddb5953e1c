"""What the client raises: one class per kind of failure, each `APIError` carrying the server's
RFC 9457 problem fields (`status`, `title`, `detail`, `errors`, ...)."""
from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


class AtelierError(Exception):
    """Anything this client raises."""


class ConfigurationError(AtelierError):
    """The client was not told enough to start (no API key)."""


class NetworkError(AtelierError):
    """The server could not be reached or stopped answering, after the retries."""


class WaitTimeout(AtelierError, TimeoutError):
    """The job had not ended when the wait ran out; it goes on on the server."""


class APIError(AtelierError):
    """The server answered with an error: its problem document's fields, as attributes."""

    def __init__(self, status: int, title: str, detail: str | None = None, *, type: str = "about:blank",
                 instance: str | None = None, errors: list[dict[str, str]] | None = None,
                 headers: httpx.Headers | None = None) -> None:
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))
        self.status, self.title, self.detail = status, title, detail
        self.type, self.instance, self.errors = type, instance, errors or []
        self.headers = headers if headers is not None else httpx.Headers()

    @property
    def fields(self) -> list[str]:
        """The request fields the server named as wrong (`params.size`, `style[1]`, ...)."""
        return [e["field"] for e in self.errors if "field" in e]


class BadRequest(APIError):
    """400: a malformed request."""


class Unauthorized(APIError):
    """401: no API key, or an unknown or revoked one."""


class NotFound(APIError):
    """404: no such job for this key (another account's jobs do not exist for it)."""


class JobDeleted(NotFound):
    """The job was deleted while it was being followed: it will never end."""


class Conflict(APIError):
    """409: e.g. canceling a job that already ended."""


class PayloadTooLarge(APIError):
    """413: the upload is over the server's limit."""


class InvalidRequest(APIError):
    """422: a field is wrong; `errors` names it."""


class RateLimited(APIError):
    """429: too many submissions or active jobs; `retry_after` says when to try again."""

    @property
    def retry_after(self) -> float | None:
        return retry_after(self.headers)


class ServiceUnavailable(APIError):
    """503: a dependency of the server (database, Redis) is down."""

    @property
    def retry_after(self) -> float | None:
        return retry_after(self.headers)


class ServerError(APIError):
    """Any other 5xx."""


BY_STATUS: dict[int, type[APIError]] = {400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict,
                                        413: PayloadTooLarge, 422: InvalidRequest, 429: RateLimited,
                                        503: ServiceUnavailable}


def from_response(response: httpx.Response) -> APIError:
    """The exception for an error response: its problem document, or (from a proxy or gunicorn
    itself) the status line and the start of whatever body came."""
    kind = BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else APIError)
    try:
        problem: dict[str, Any] = response.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"detail": response.text[:200].strip() or None}
    title = problem.get("title") or response.reason_phrase or "Error"
    return kind(response.status_code, str(title), problem.get("detail"), type=problem.get("type", "about:blank"),
                instance=problem.get("instance"), errors=problem.get("errors"), headers=response.headers)


def retry_after(headers: httpx.Headers) -> float | None:
    """`Retry-After` in seconds (RFC 9110: delta-seconds or an HTTP date), None if absent or unreadable."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
