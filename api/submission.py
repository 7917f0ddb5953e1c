"""Parsing and validating `POST /v1/jobs`: the multipart body, the images and the params."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from flask import Request
from pydantic import ValidationError
from redis import Redis, RedisError
from werkzeug.datastructures import FileStorage

from api.errors import ProblemError, from_validation_error, invalid
from shared import capacity
from shared.config import Settings
from shared.devices import working_devices
from shared.images import ImageError, open_image
from shared.schemas import JobParams, effective_params, engine_params
from shared.params import ParamError
from shared.webhooks import outbox, targets

log = logging.getLogger(__name__)
MAX_IDEMPOTENCY_KEY = 255
MAX_FILENAME = 255  # job_inputs.filename
FORM_FIELDS = frozenset({"params", "webhook_url", "webhook_events"})
UNNAMED = "(a part without a name)"


@dataclass(frozen=True)
class Upload:
    field: str            # "content" or "style[i]": what a problem names
    filename: str | None
    data: bytes
    size: tuple[int, int]  # (width, height), upright


@dataclass(frozen=True)
class Submission:
    content: Upload
    styles: list[Upload]
    params: dict[str, Any]  # effective
    request_hash: str       # same inputs, effective params and webhook <=> same hash
    webhook_url: str | None = None
    webhook_events: list[str] | None = None


def parse(request: Request, settings: Settings) -> Submission:
    if request.mimetype != "multipart/form-data":
        raise ProblemError(415, "Unsupported Media Type",
                           f"send multipart/form-data with files `content` and `style`, not {request.mimetype or 'no body'}")
    files = request.files  # raises 413 past MAX_CONTENT_LENGTH
    unknown = sorted(str(name or UNNAMED) for name in set(files) - {"content", "style", "params"}) \
        + sorted(str(name or UNNAMED) for name in set(request.form) - FORM_FIELDS)
    if unknown:
        raise invalid(unknown[0], "unknown field; expected files `content`, `style` and the fields "
                                  + ", ".join(f"`{f}`" for f in sorted(FORM_FIELDS)))
    contents, styles = files.getlist("content"), files.getlist("style")
    if len(contents) != 1:
        raise invalid("content", "exactly one content image is required")
    if not styles:
        raise invalid("style", "at least one style image is required")
    if len(styles) > settings.max_styles:
        raise invalid("style", f"at most {settings.max_styles} style images are allowed, not {len(styles)}")
    content = _read_image("content", contents[0], settings)
    style_uploads = [_read_image(f"style[{i}]", f, settings) for i, f in enumerate(styles)]
    values = _params_object(_params_text(request))
    webhook_url, webhook_events = _webhook(request, values, settings)
    params = _params(values, settings, len(style_uploads))
    fingerprint = json.dumps({"inputs": [hashlib.sha256(u.data).hexdigest() for u in (content, *style_uploads)],
                              "params": params, "webhook": [webhook_url, webhook_events]}, sort_keys=True)
    return Submission(content, style_uploads, params, hashlib.sha256(fingerprint.encode()).hexdigest(),
                      webhook_url, webhook_events)


def predict(submission: Submission, client: Redis) -> dict[str, Any] | None:
    """The job's predicted run time and peak memory (`shared.capacity`) on the live workers'
    fastest device, at the pace each worker measured on its own jobs; None when no worker is live,
    or Redis cannot say (a job is never refused for that). A 422 naming the parameter when it fits
    on no live worker's device."""
    try:
        live = list(working_devices(client).values())
    except (RedisError, OSError) as exc:
        log.warning("capacity check skipped: cannot read the workers' devices: %s", exc)
        return None
    if not live:
        return None
    devices = [capacity.Device.from_report(d) for d in live]
    work = capacity.workload(engine_params(submission.params), submission.content.size,
                             [s.size for s in submission.styles])
    if (why := capacity.too_big(work, devices)) is not None:
        largest = max(devices, key=lambda d: d.memory_bytes or 0)
        raise invalid(f"params.{capacity.limiting_field(work, largest.kind, largest.precision)}", why)
    return min((capacity.predict(work, d.kind, d.precision, d.pace) for d in devices),
               key=lambda p: p.seconds).to_dict()


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip().strip('"')
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters", status=400)
    return key


def prefer_wait(request: Request, settings: Settings) -> int | None:
    """The seconds a `Prefer: wait=N` (RFC 7240; bare `wait`: the longest allowed) asks the submission
    to hold its request for the job to end, capped at ATELIER_MAX_PREFER_WAIT_SECONDS; None when
    not asked or waiting is off. Other preferences are ignored, as RFC 7240 asks; a repeated
    `wait` counts once (the first)."""
    for header in request.headers.getlist("Prefer"):
        for preference in header.split(","):
            token, _, value = preference.split(";", 1)[0].partition("=")
            if token.strip().lower() != "wait":
                continue
            value = value.strip().strip('"')
            if value and not (value.isascii() and value.isdigit() and len(value) <= 10):
                raise invalid("Prefer", f"wait must be a whole number of seconds, e.g. wait=30, not {value[:20]!r}",
                              status=400)
            if settings.max_prefer_wait_seconds <= 0:
                return None
            return min(int(value), settings.max_prefer_wait_seconds) if value else settings.max_prefer_wait_seconds
    return None


def _read_image(field: str, upload: FileStorage, settings: Settings) -> Upload:
    data = upload.read()
    if not data:
        raise invalid(field, "the file is empty")
    try:
        image = open_image(data, max_pixels=settings.max_pixels)
    except ImageError as exc:
        raise invalid(field, str(exc)) from None
    return Upload(field, safe_filename(upload.filename), data, image.size)


def safe_filename(name: str | None) -> str | None:
    """The name a client gave a file, kept for display only: its last path component, without
    control characters (NUL breaks PostgreSQL text), at most 255 characters; None if nothing is left."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    return name[:MAX_FILENAME] or None


def _params_text(request: Request) -> str | None:
    """`params` as a plain form field, or as a JSON file part (`curl -F params=@p.json`)."""
    if len(request.files.getlist("params")) + len(request.form.getlist("params")) > 1:
        raise invalid("params", "give params once, as a field or a file part")
    if "params" in request.files:
        try:
            return request.files["params"].read().decode("utf-8")
        except UnicodeDecodeError:
            raise invalid("params", "must be UTF-8 JSON", status=400) from None
    return request.form.get("params")


def _params_object(raw: str | None) -> dict[str, Any]:
    try:
        values = json.loads(raw) if raw not in (None, "") else {}
    except json.JSONDecodeError as exc:
        raise invalid("params", f"not valid JSON: {exc}", status=400) from None
    except (ValueError, RecursionError):  # a number of thousands of digits, or nesting deeper than Python's stack
        raise invalid("params", "not valid JSON: a number too long or nesting too deep", status=400) from None
    if not isinstance(values, dict):
        raise invalid("params", "must be a JSON object", status=400)
    return values


def _webhook(request: Request, values: dict[str, Any], settings: Settings) -> tuple[str | None, list[str] | None]:
    """`webhook_url` and `webhook_events`, as form fields or inside `params` (taken out of it).
    The URL must be one a delivery may reach now (see shared.webhooks.targets)."""
    url_field, url = _form_or_params(request, values, "webhook_url")
    events_field, events = _form_or_params(request, values, "webhook_events")
    if url is None:
        if events is not None:
            raise invalid("webhook_url", "is required when webhook_events is given")
        return None, None
    if url_field == "webhook_url":  # form values come as a list
        if len(url) > 1:
            raise invalid(url_field, "give one URL")
        url = url[0]
    if not isinstance(url, str):
        raise invalid(url_field, "must be a string")
    try:
        targets.resolve(url, targets.parse_networks(settings.webhook_allow_networks))
    except targets.RefusedURL as exc:
        raise invalid(url_field, str(exc)) from None
    if events is None:
        return url, list(outbox.DEFAULT_EVENTS)
    if events_field == "webhook_events":  # form: repeated and/or comma-separated
        events = [e.strip() for value in events for e in value.split(",") if e.strip()]
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise invalid(events_field, "must be a non-empty list of event types")
    unknown = sorted(set(events) - set(outbox.EVENT_TYPES))
    if unknown:
        raise invalid(events_field, f"unknown event {unknown[0]!r}; expected some of {', '.join(outbox.EVENT_TYPES)}")
    return url, [e for e in outbox.EVENT_TYPES if e in events]


def _form_or_params(request: Request, values: dict[str, Any], name: str) -> tuple[str, Any]:
    """(the field to name in a problem, the value) of a field sent as form field(s) or in params."""
    form, in_params = request.form.getlist(name), values.pop(name, None)
    if form and in_params is not None:
        raise invalid(name, "give it as a form field or inside params, not both")
    if in_params is not None:
        return f"params.{name}", in_params
    return name, form or None


def _params(values: dict[str, Any], settings: Settings, styles: int) -> dict[str, Any]:
    try:
        params = JobParams.model_validate(values)
        return effective_params(params, settings, styles)
    except ValidationError as exc:
        raise from_validation_error(exc, "params") from None
    except ParamError as exc:
        raise invalid(f"params.{exc.field}", exc.message) from None
