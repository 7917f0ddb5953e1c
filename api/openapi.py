"""The OpenAPI 3.1 document, generated from the pydantic models that validate and serialise.

Operator limits (max size, max iterations, max styles) are written into the schema, so the
document describes this deployment, not just the code.
"""
from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from shared.config import Settings
from shared.schemas import OUTPUT_FORMATS, JobList, JobOut, JobParams, Problem
from shared.webhooks.history import DeliveryList, DeliveryOut
from shared.webhooks.outbox import EVENT_TYPES, WebhookPayload
from shared.webhooks.signing import WebhookSecretOut

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _problems(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request (names the field)", 401: "Missing or unknown API key", 404: "No such job (or delivery) for this key",
            409: "The job already ended (or a delivery attempt is under way)",
            410: "The job's files were removed under the retention policy (`data_removed`)", 413: "Request body over the upload limit", 415: "Not multipart/form-data",
            422: "Invalid field (named in `errors`); on submission also a job predicted to need more memory than "
                 "any live worker's device has (`params.size` or `params.style_scale`)",
            429: "Too many submissions (ATELIER_SUBMIT_RATE_LIMIT) or active jobs for this key or account", 503: "A dependency is down"}
    retry = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 0}}}
    return {str(c): {"description": text[c], "content": {"application/problem+json": {"schema": _ref("Problem")}},
                     **({"headers": retry} if c in (429, 503) else {})}
            for c in codes}


def _job(status: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {"schema": _ref("JobOut")}},
                     **({"headers": headers} if headers else {})}}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


# a file part, as generators understand one: `format: binary` (OpenAPI 3.0's spelling, still read by most
# generators) next to 3.1's `contentMediaType`
IMAGE_FILE = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
SUBMITTED = {"Location": _header("The job's URL"),
             "Idempotent-Replayed": _header("`true` when an earlier request with this `Idempotency-Key` made the job"),
             "Preference-Applied": _header("`wait=N`: the request waited up to N seconds for the job to end")}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
REDIRECT = {"description": "With ATELIER_STORAGE_REDIRECT_SECONDS on object storage: the image is at `Location`, a "
                           "presigned URL valid that long (same ETag; 304 still answered here)",
            "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}}}
# one event of the stream, as Server-Sent Events parse it (keep-alive comments are not events)
SSE_EVENT = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"type": "string", "enum": ["status", "queue", "progress", "snapshot", "deleted", "error"]},
    "data": {"type": "string", "contentMediaType": "application/json",
             "description": "JSON: the job (`status`), where it stands while queued (`queue`, as the job's "
                            "`queue`), its progress (`progress`), the new snapshot (`snapshot`), `{\"id\": ...}` "
                            "(`deleted`: the job was deleted; the stream ends) or a problem (`error`: the stream "
                            "broke; reconnect or poll)"}}}


def build_spec(settings: Settings) -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(JobParams, "validation"), (JobOut, "serialization"), (JobList, "serialization"), (Problem, "serialization"),
         (WebhookSecretOut, "serialization"), (DeliveryOut, "serialization"), (DeliveryList, "serialization"),
         (WebhookPayload, "serialization")],
        ref_template=REF)
    components = schemas["$defs"]
    params = components["JobParams"]["properties"]
    params["size"]["maximum"] = settings.max_size
    params["size"]["default"] = min(params["size"]["default"], settings.max_size)
    params["iterations"]["anyOf"][0]["maximum"] = settings.max_iterations
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    images = {name: {"description": f"The {name.lower()} image, in the job's `output_format` "
                                    "(as `application/octet-stream` when that is all `Accept` asks for)",
                     "content": {**{mime: {"schema": {"type": "string", "contentMediaType": mime}}
                                    for mime in OUTPUT_FORMATS.values()}, **binary}}
              for name in ("Result", "Snapshot")}
    cached = {"ETag": {"schema": {"type": "string"}}, "Cache-Control": {"schema": {"type": "string"}}}
    for response in images.values():
        response["headers"] = cached
    return {
        "openapi": "3.1.0",
        "info": {"title": "Atelier", "version": "1.0.0",
                 "description": "Neural style transfer (Gatys et al.) as a queued job service."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Submit a job", "operationId": "submitJob",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "description": "The same key and body return the same job, never a second one.",
                                    "schema": {"type": "string", "maxLength": 255}},
                                   {"name": "Prefer", "in": "header", "required": False,
                                    "description": "`wait=N` (RFC 7240): hold the request up to N seconds (at most "
                                                   f"{settings.max_prefer_wait_seconds}; bare `wait`: that many) and "
                                                   "answer `201` with the job if it ends by then, else `202` as usual. "
                                                   "Other preferences are ignored.",
                                    "schema": {"type": "string", "examples": ["wait=30"]}}],
                    "requestBody": {"required": True, "content": {"multipart/form-data": {
                        "schema": {"type": "object", "required": ["content", "style"], "additionalProperties": False,
                                   "properties": {
                            "content": IMAGE_FILE | {"description": "The content image (PNG, JPEG, WebP, GIF, BMP or TIFF)"},
                            "style": {"type": "array", "minItems": 1, "maxItems": settings.max_styles,
                                      "description": "One or more style images, blended by `params.style_weights`",
                                      "items": IMAGE_FILE},
                            "params": _ref("JobParams"),
                            "webhook_url": {"type": "string", "format": "uri",
                                            "description": "POST this job's events here (http(s), public addresses only); "
                                                           "may also be a key of `params`"},
                            "webhook_events": {"type": "string", "description": "Comma-separated, some of "
                                               + ", ".join(EVENT_TYPES) + "; default: the terminal ones"}}},
                        "encoding": {"params": {"contentType": "application/json"}}}}},
                    "responses": {**_job("201", "With `Prefer: wait`: the job ended within the wait (its `status` "
                                                "says how)", SUBMITTED),
                                  **_job("202", "Accepted and queued (or, with `Prefer: wait`, still running when "
                                                "the wait ran out); `Location` is the job's URL", SUBMITTED),
                                  **_problems(400, 401, 413, 415, 422, 429)},
                },
                "get": {
                    "summary": "List your jobs, newest first", "operationId": "listJobs",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "canceled"]}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "A page of jobs",
                                          "content": {"application/json": {"schema": _ref("JobList")}}},
                                  **_problems(400, 401)},
                },
            },
            "/v1/jobs/{job_id}": {
                "parameters": [JOB_ID],
                "get": {"summary": "Get a job", "operationId": "getJob",
                        "responses": {**_job("200", "The job"), **_problems(401, 404)}},
                "delete": {"summary": "Delete a job and its files (a running job is canceled first)",
                           "operationId": "deleteJob",
                           "responses": {"204": {"description": "Deleted"}, **_problems(401, 404)}},
            },
            "/v1/jobs/{job_id}/cancel": {
                "parameters": [JOB_ID],
                "post": {"summary": "Cancel a job", "operationId": "cancelJob",
                         "responses": {**_job("200", "Canceled (it was queued)"),
                                       **_job("202", "A running job was asked to stop; it ends `canceled` within a few iterations"),
                                       **_problems(401, 404, 409)}},
            },
            "/v1/jobs/{job_id}/result": {
                "parameters": [JOB_ID],
                "get": {"summary": "The result image", "operationId": "getResult",
                        "responses": {"200": images["Result"], "302": REDIRECT, "304": {"description": "Not modified"},
                                      **_problems(401, 404, 410, 503)}},
            },
            "/v1/jobs/{job_id}/snapshots/{iteration}": {
                "parameters": [JOB_ID, {"name": "iteration", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "get": {"summary": "An intermediate image", "operationId": "getSnapshot",
                        "responses": {"200": images["Snapshot"], "302": REDIRECT, "304": {"description": "Not modified"},
                                      **_problems(401, 404, 410, 503)}},
            },
            "/v1/jobs/{job_id}/events": {
                "parameters": [JOB_ID],
                "get": {"summary": "Live events (Server-Sent Events: `status`, `queue`, `progress`, `snapshot`, "
                                   "`deleted`)",
                        "operationId": "jobEvents",
                        "responses": {"200": {"description": "An event stream; the first event is the job's status",
                                              "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                                      **_problems(401, 404, 503)}},
            },
            "/v1/jobs/{job_id}/deliveries": {
                "parameters": [JOB_ID],
                "get": {"summary": "The job's webhook deliveries, with every attempt", "operationId": "listDeliveries",
                        "responses": {"200": {"description": "Oldest first",
                                              "content": {"application/json": {"schema": _ref("DeliveryList")}}},
                                      **_problems(401, 404)}},
            },
            "/v1/deliveries/{delivery_id}/redeliver": {
                "parameters": [{"name": "delivery_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "post": {"summary": "Send a delivery again now (same `webhook-id` and body)", "operationId": "redeliver",
                         "responses": {"202": {"description": "Queued for delivery",
                                               "content": {"application/json": {"schema": _ref("DeliveryOut")}}},
                                       **_problems(401, 404, 409)}},
            },
            "/v1/webhooks/secret": {
                "get": {"summary": "This API key's webhook signing secret", "operationId": "getWebhookSecret",
                        "responses": {"200": {"description": "The secret",
                                              "content": {"application/json": {"schema": _ref("WebhookSecretOut")}}},
                                      **_problems(401)}},
            },
            "/v1/webhooks/secret/rotate": {
                "post": {"summary": "A new secret; the old one keeps signing for a grace period",
                         "operationId": "rotateWebhookSecret",
                         "responses": {"200": {"description": "The new secret",
                                               "content": {"application/json": {"schema": _ref("WebhookSecretOut")}}},
                                       **_problems(401)}},
            },
            "/v1/openapi.json": {"get": {"summary": "This document", "operationId": "openapi", "security": [],
                                         "responses": {"200": {"description": "OpenAPI 3.1",
                                                               "content": {"application/json": {}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "operationId": "healthz", "security": [],
                                 "responses": {"200": {"description": "The process is up"}}}},
            "/readyz": {"get": {"summary": "Readiness: database and Redis reachable", "operationId": "readyz",
                                "security": [],
                                "responses": {"200": {"description": "Ready"}, **_problems(503)}}},
        },
        "webhooks": {"jobEvent": {"post": {
            "summary": "A job event, signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`)",
            "operationId": "jobEvent", "security": [],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("WebhookPayload")}}},
            "responses": {"200": {"description": "Any 2xx within the timeout: delivered; 410: stop; anything else: retried"}}}}},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "An API key from `atelier keys create NAME`"}}},
    }
