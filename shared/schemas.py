"""Request and response shapes: they validate submissions and generate the OpenAPI document.

`JobParams` is what a client may send; `effective_params` turns it, within the operator's
limits, into the engine's full parameter set (stored on the job, shown back to the client,
and rebuilt into `worker.engine.Params` by the worker with `engine_params`).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.config import Settings
from shared.models import Job, JobStatus
from worker.engine import ParamError, Params, plan

OUTPUT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
SERVICE_FIELDS = ("snapshot_every", "output_format")  # ours; everything else is the engine's
TUPLE_FIELDS = ("style_weights", "content_layers", "style_layers", "style_layer_weights")


class JobParams(BaseModel):
    """The `params` field of `POST /v1/jobs`: a JSON object, every key optional."""

    model_config = ConfigDict(extra="forbid", strict=True, title="JobParams")

    size: int = Field(512, ge=32, description="Longest side of the output, in pixels (default: 512, or the server's maximum if lower).")
    iterations: int | None = Field(None, ge=1, description="Total optimiser iterations over all scales; null: the engine's choice.")
    scales: int | None = Field(None, ge=1, le=6, description="Coarse-to-fine stages; null: automatic.")
    style_weights: list[float] | None = Field(None, min_length=1, description="Blend of the style images, one weight each.")
    content_weight: float = Field(1.0, ge=0, le=1e9)
    style_weight: float = Field(30.0, ge=0, le=1e9)
    tv_weight: float = Field(0.0, ge=0, le=1e9, description="Total-variation smoothing.")
    style_scale: float = Field(1.0, ge=0.1, le=4.0, description="Size of the style features relative to the output.")
    init: Literal["content", "noise"] = "content"
    seed: int = Field(0, ge=0, le=2**63 - 1)
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    learning_rate: float = Field(0.02, gt=0, le=10, description="Adam's step size.")
    pooling: Literal["max", "avg"] = "max"
    preserve_color: Literal["none", "luminance", "histogram"] = "none"
    snapshot_every: int = Field(50, ge=0, le=2**31 - 1, description="Store an intermediate image every N iterations; 0: none.")
    output_format: Literal["png", "jpeg", "webp"] = "png"


def effective_params(params: JobParams, settings: Settings, styles: int) -> dict[str, Any]:
    """Apply the operator's limits and the engine's own checks; raises ParamError naming the field."""
    if "size" not in params.model_fields_set:
        params = params.model_copy(update={"size": min(params.size, settings.max_size)})
    if params.size > settings.max_size:
        raise ParamError("size", f"must be at most {settings.max_size} on this server, not {params.size}")
    if params.style_weights is not None and len(params.style_weights) != styles:
        raise ParamError("style_weights", f"needs one weight per style image ({styles}), not {len(params.style_weights)}")
    engine_fields = params.model_dump(exclude=set(SERVICE_FIELDS))
    if engine_fields["style_weights"] is not None:
        engine_fields["style_weights"] = tuple(engine_fields["style_weights"])
    engine = Params(**engine_fields)
    total = sum(stage.iterations for stage in plan(engine))
    if total > settings.max_iterations:
        raise ParamError("iterations", f"{total} iterations exceed this server's limit of {settings.max_iterations}")
    return engine.to_dict() | {"iterations": total, "snapshot_every": params.snapshot_every,
                               "output_format": params.output_format}


def engine_params(effective: dict[str, Any]) -> Params:
    """The stored effective parameters back as the engine's `Params`."""
    fields = {k: tuple(v) if k in TUPLE_FIELDS and v is not None else v
              for k, v in effective.items() if k not in SERVICE_FIELDS}
    return Params(**fields)


# ---- responses -----------------------------------------------------------------------------

class Progress(BaseModel):
    iteration: int
    total: int
    scale: int = Field(description="0-based coarse-to-fine stage.")
    scales: int
    percent: float
    losses: dict[str, float]
    iterations_per_second: float
    eta_seconds: float | None
    resumed_from: int | None = Field(None, description="Iteration this attempt resumed from a checkpoint, if it did.")


class SnapshotOut(BaseModel):
    iteration: int
    url: str
    created_at: datetime


class ResultOut(BaseModel):
    url: str
    width: int
    height: int
    quality: dict[str, float] | None


class ErrorOut(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any]
    progress: Progress | None
    snapshots: list[SnapshotOut]
    result: ResultOut | None
    error: ErrorOut | None
    attempts: int
    urls: dict[str, str]


class JobList(BaseModel):
    data: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


def job_path(job_id: str, *rest: str | int) -> str:
    return "/".join((f"/v1/jobs/{job_id}", *map(str, rest)))


def job_out(job: Job) -> JobOut:
    urls = {"self": job_path(job.id), "cancel": job_path(job.id, "cancel"), "events": job_path(job.id, "events")}
    result = None
    if job.result_key is not None:
        urls["result"] = job_path(job.id, "result")
        result = ResultOut(url=urls["result"], width=job.result_width or 0, height=job.result_height or 0,
                           quality=job.result_quality)
    return JobOut(
        id=job.id, status=job.state, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, params=job.params,
        progress=Progress(**job.progress) if job.progress else None,
        snapshots=[SnapshotOut(iteration=s.iteration, url=job_path(job.id, "snapshots", s.iteration), created_at=s.created_at)
                   for s in job.snapshots],
        result=result,
        error=ErrorOut(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        attempts=job.attempts, urls=urls,
    )
