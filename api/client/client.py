"""`Client`: the Atelier API from Python, as a program uses it.

    from api.client import Client

    client = Client()                      # ATELIER_URL (default http://127.0.0.1:8000) and ATELIER_KEY
    job = client.submit("samples/tubingen.jpg", ["samples/starry_night.jpg"], size=256)
    job = client.wait(job)                 # follows the live event stream; polls if it breaks
    client.download_result(job, "out.png")

Every request is retried on 429 and 503 after the server's `Retry-After`, and on network errors
when that is safe: a GET, or a submission, which always carries an `Idempotency-Key` (a new random
one unless given), so a retried submission never makes a second job.
"""
from __future__ import annotations

import json
import logging
import math
import mimetypes
import os
import queue
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Sequence

import httpx
from httpx_sse import EventSource, connect_sse

from api.client.errors import (ConfigurationError, JobDeleted, NetworkError, NotFound, ServiceUnavailable,
                               WaitTimeout, from_response, retry_after)
from api.client.models import Event, Job

log = logging.getLogger("atelier.client")

DEFAULT_URL = "http://127.0.0.1:8000"
RETRIED = frozenset({429, 503})
STREAM_READ_TIMEOUT = 60.0  # the server sends a keep-alive every 15 s: a minute of silence is a dead stream
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}

JobRef = Job | str                              # a job, or its id
ImageSource = str | os.PathLike | bytes | BinaryIO  # a file name, the bytes, or an open binary file


class Client:
    """One server and API key. `timeout`: seconds per network operation (connect, each read, each
    write); `max_retries`: retries of one request; `max_retry_wait`: the longest `Retry-After` it
    sleeps through (a longer one raises at once); `poll_interval`: seconds between polls when the
    event stream is unavailable."""

    def __init__(self, base_url: str | None = None, key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 3, max_retry_wait: float = 60.0, poll_interval: float = 1.0) -> None:
        base_url = base_url or os.environ.get("ATELIER_URL") or DEFAULT_URL
        key = key or os.environ.get("ATELIER_KEY")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"the server URL must start with http:// or https://, e.g. {DEFAULT_URL}; "
                                     f"not {base_url!r}")
        if not key:
            raise ConfigurationError("no API key: pass one or set ATELIER_KEY (`atelier keys create NAME` makes one)")
        if not (key.isascii() and key.isprintable()):  # a header value; keys the server makes are URL-safe ASCII
            raise ConfigurationError("the API key must be printable ASCII, as `atelier keys create NAME` prints it")
        self.base_url = base_url.rstrip("/")
        self.timeout, self.max_retries, self.max_retry_wait = timeout, max_retries, max_retry_wait
        self.poll_interval = poll_interval
        try:
            self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                      headers={"Authorization": f"Bearer {key}", "User-Agent": "atelier-client"})
        except httpx.InvalidURL as exc:
            raise ConfigurationError(f"the server URL {base_url!r} is not valid: {exc}") from None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- jobs -----------------------------------------------------------------------------------

    def submit(self, content: ImageSource, styles: ImageSource | Sequence[ImageSource], *,
               webhook_url: str | None = None, webhook_events: str | Iterable[str] | None = None,
               idempotency_key: str | None = None, **params: Any) -> Job:
        """Queue a job: a content image, one or more style images, and any parameters of
        `atelier submit --help` (`size=256`, `style_weights=[3, 1]`, ...); the server checks them
        and names a wrong one in `InvalidRequest.errors`."""
        if isinstance(styles, (str, bytes, os.PathLike)) or hasattr(styles, "read"):
            styles = [styles]
        files = [("content", _file(content)), *(("style", _file(style)) for style in styles)]
        data = {"params": json.dumps(params)} if params else {}
        if webhook_url is not None:
            data["webhook_url"] = webhook_url
        if webhook_events is not None:  # a list, or one string of comma-separated events
            data["webhook_events"] = webhook_events if isinstance(webhook_events, str) else ",".join(webhook_events)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return Job(self._request("POST", "/v1/jobs", safe=True, files=files, data=data, headers=headers).json())

    def get(self, job: JobRef) -> Job:
        return Job(self._request("GET", f"/v1/jobs/{_id(job)}").json())

    def list(self, status: str | None = None, page_size: int = 20) -> Iterator[Job]:
        """Every job of this account, newest first, `page_size` a request, fetched as iterated."""
        query: dict[str, Any] = {"limit": page_size} | ({"status": status} if status else {})
        while True:
            page = self._request("GET", "/v1/jobs", params=query).json()
            yield from (Job(data) for data in page["data"])
            if not page["next_cursor"]:
                return
            query["cursor"] = page["next_cursor"]

    def cancel(self, job: JobRef) -> Job:
        """A queued job is canceled at once; a running one stops within a few iterations (its status
        says `running` until then). `Conflict` if it already ended."""
        return Job(self._request("POST", f"/v1/jobs/{_id(job)}/cancel", safe=False).json())

    def delete(self, job: JobRef) -> None:
        """The job and its files (a running job is canceled first)."""
        self._request("DELETE", f"/v1/jobs/{_id(job)}", safe=False)

    def wait(self, job: JobRef, timeout: float | None = None) -> Job:
        """The job once it has ended (succeeded, failed or canceled: check `status`). `WaitTimeout`
        after `timeout` seconds; the job goes on regardless. `JobDeleted` if it is deleted meanwhile."""
        (last,) = deque(self.events(job, timeout), maxlen=1)  # the status that ended it
        return last.job

    def events(self, job: JobRef, timeout: float | None = None) -> Iterator[Event]:
        """The job's events as they happen, the last one the `status` that ends it. They come from
        the live stream; when that cannot be had or breaks (Redis down, a proxy cutting it), from
        polling every `poll_interval` seconds, which yields the same kinds of events for what changed.
        `WaitTimeout` after `timeout` seconds; `JobDeleted` (a `NotFound`, as polling a deleted job
        raises) when the job is deleted."""
        job_id = _id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = _Seen()
        try:
            for event in self._stream(job_id, deadline):
                if event.type == "deleted":
                    raise _deleted(job_id)
                seen.note(event)
                yield event
                if event.ends:
                    return
            reason = "it closed before the job ended"
        except (httpx.TransportError, ServiceUnavailable, _Broken) as exc:
            reason = str(exc) or type(exc).__name__
        log.warning("job %s: no live events (%s); polling every %g s", job_id, reason, self.poll_interval)
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise _ran_out(job_id)
            for event in seen.news(self._poll(job_id, seen)):
                yield event
                if event.ends:
                    return
            left = math.inf if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(self.poll_interval, left)))

    def _poll(self, job_id: str, seen: _Seen) -> Job:
        """The job now; `JobDeleted` if it is gone after it was seen (never seen: the `NotFound` of no such job)."""
        try:
            return self.get(job_id)
        except NotFound:
            if seen.status is None:
                raise
            raise _deleted(job_id) from None

    # ---- images ---------------------------------------------------------------------------------

    def download_result(self, job: JobRef, path: str | os.PathLike) -> Path:
        """Save the result image at `path` (written whole or not at all). `NotFound` if the job has
        no result (yet)."""
        return _save(self._request("GET", f"/v1/jobs/{_id(job)}/result").content, Path(path))

    def download_snapshots(self, job: JobRef, directory: str | os.PathLike) -> list[Path]:
        """Save every snapshot of the job that is not there yet as `DIRECTORY/000050.png` (the
        iteration; the job's output format); the paths of all of them, oldest first."""
        job = self.get(job)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        suffix = SUFFIXES.get(job.params.get("output_format", "png"), "")
        paths = []
        for snapshot in job.snapshots:
            path = directory / f"{snapshot['iteration']:06d}{suffix}"
            if not path.exists():
                _save(self._request("GET", snapshot["url"]).content, path)
            paths.append(path)
        return paths

    # ---- transport ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, safe: bool = True, **kwargs: Any) -> httpx.Response:
        """The response, retried on 429/503 and on network errors (only where nothing can have
        happened, a refused connection, unless `safe`: a repeat has the same effect); an error
        response raises its `APIError`."""
        attempt = 0
        while True:
            last = attempt == self.max_retries
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if last or not (safe or unsent):
                    raise NetworkError(_describe(self.base_url, exc)) from exc
                delay, why = _backoff(attempt), str(exc) or type(exc).__name__
            else:
                if response.status_code not in RETRIED or last:
                    if response.is_error:
                        raise from_response(response)
                    return response
                asked = retry_after(response.headers)
                if asked is not None and asked > self.max_retry_wait:
                    raise from_response(response)
                delay = max(asked or 0.0, _backoff(attempt))  # rate limiters round Retry-After down, even to 0
                why = f"{response.status_code} {response.reason_phrase}"
            attempt += 1
            log.warning("%s %s: %s; retry %d of %d in %.1f s", method, path, why, attempt, self.max_retries, delay)
            time.sleep(delay)

    def _stream(self, job_id: str, deadline: float | None) -> Iterator[Event]:
        """The live events, read by a thread of their own, so that the deadline holds to the second
        even while the stream carries nothing but keep-alives (a queued job)."""
        with connect_sse(self._http, "GET", f"/v1/jobs/{job_id}/events",
                         timeout=httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)) as source:
            if source.response.status_code != 200:
                source.response.read()
                raise from_response(source.response)
            received: queue.Queue[Event | BaseException | None] = queue.Queue()
            threading.Thread(target=_read_events, args=(source, received), daemon=True).start()
            while True:
                try:
                    item = received.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise _ran_out(job_id) from None
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item


def _read_events(source: EventSource, received: queue.Queue) -> None:
    """Put each event of the stream on `received`, then None at its end, or what broke it."""
    try:
        for message in source.iter_sse():
            data = json.loads(message.data)
            if message.event == "error":
                raise _Broken(data.get("detail", "the server reported an error"))
            received.put(Event(message.event, data))
        received.put(None)
    except Exception as exc:  # the consumer raises it (if it is still there: closing the stream ends this too)
        received.put(exc)


class _Broken(Exception):
    """The server ended the event stream with an `error` event."""


class _Seen:
    """What a follower has reported, so that polling after a broken stream reports only news."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.queue: dict[str, Any] | None = None
        self.progress: dict[str, Any] | None = None
        self.snapshots: set[int] = set()

    def note(self, event: Event) -> None:
        if event.type == "status":
            self.status = event.data["status"]
            self.queue = event.data.get("queue")
            self.progress = event.data.get("progress") or self.progress
            self.snapshots |= {s["iteration"] for s in event.data.get("snapshots", [])}
        elif event.type == "queue":
            self.queue = event.data
        elif event.type == "progress":
            self.progress = event.data
        elif event.type == "snapshot":
            self.snapshots.add(event.data["iteration"])

    def news(self, job: Job) -> list[Event]:
        """Events for what changed since, the status last (it may be the one that ends the job)."""
        events = [Event("snapshot", s) for s in job.snapshots if s["iteration"] not in self.snapshots]
        if job.progress and job.progress != self.progress:
            events.insert(0, Event("progress", job.progress))
        if job.status != self.status:
            events.append(Event("status", job.data))
        elif job.queue and job.queue != self.queue:
            events.append(Event("queue", job.queue))
        for event in events:
            self.note(event)
        return events


def _deleted(job_id: str) -> JobDeleted:
    return JobDeleted(404, "Not Found", f"job {job_id} was deleted")


def _ran_out(job_id: str) -> WaitTimeout:
    return WaitTimeout(f"job {job_id} had not ended when the wait ran out; it goes on on the server")


def _id(job: JobRef) -> str:
    return job.id if isinstance(job, Job) else str(job)


def _file(source: ImageSource) -> tuple[str, bytes, str]:
    """(file name, bytes, media type) of an image to upload; read once, so a retry sends it again."""
    if isinstance(source, bytes):
        return "image", source, "application/octet-stream"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name, data = path.name, path.read_bytes()
    else:
        name, data = Path(getattr(source, "name", "image")).name, source.read()
    return name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"


def _save(data: bytes, path: Path) -> Path:
    """Write `data` to a new file beside `path` (its mode from the umask, as any file the user
    makes), then rename it into place: never a partial file."""
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(part, "xb") as file:
            file.write(data)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path


def _backoff(attempt: int) -> float:
    return min(8.0, 0.5 * 2**attempt)


def _describe(base_url: str, exc: httpx.TransportError) -> str:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return f"cannot reach {base_url} ({reason}); is the server running?"
    return f"{base_url} stopped answering ({reason})"
