"""Request and response shapes: they validate submissions and generate the OpenAPI document.

`JobParams` is what a client may send: the engine's parameters, derived from the table in
`shared.params` (those a service client may set), plus the service's own `snapshot_every` and
`output_format`. The model checks JSON types only; values are checked by `Params` itself, so the
API refuses exactly what `atelier stylize` refuses, in the same words. `effective_params` turns
a request, within the operator's limits, into the full parameter set that runs (stored on the
job and shown back to the client); `engine_params` reads it back for the worker.
"""
from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from shared.config import Settings
from shared.models import Job, JobStatus
from shared.params import Params, ParamError, kind, optional, resolve, spec

OUTPUT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
SERVICE_FIELDS = ("snapshot_every", "output_format")  # ours; everything else is the engine's
JSON_TYPES = {"int": int, "float": float, "str": str, "names": list[str], "numbers": list[float]}


def _engine_field(f: Any) -> tuple[Any, Any]:
    """A `Params` field as a model field: its JSON type, default and help; its bounds and choices
    only documented (in the schema), since `Params` checks them."""
    s, type_ = spec(f), JSON_TYPES[kind(f)]
    constraints: dict[str, Any] = {}
    if s.low is not None:
        constraints["minimum"] = s.low
    if s.high is not None:
        constraints["maximum"] = s.high
    if s.choices:
        constraints["enum"] = list(s.service_choices or s.choices)

    def document(schema: dict[str, Any]) -> None:
        target = next((branch for branch in schema.get("anyOf", []) if branch.get("type") != "null"), schema)
        if target.get("type") == "array":
            target["minItems"] = 1
            target["items"].update(constraints)
        else:
            target.update(constraints)

    default = list(f.default) if isinstance(f.default, tuple) else f.default
    return (type_ | None if optional(f) else type_), Field(default, description=s.help, json_schema_extra=document)


JobParams = create_model(
    "JobParams",
    __config__=ConfigDict(extra="forbid", strict=True, title="JobParams"),
    __doc__="The `params` field of `POST /v1/jobs`: a JSON object, every key optional.",
    **{f.name: _engine_field(f) for f in fields(Params) if spec(f).service},
    snapshot_every=(int, Field(50, ge=0, le=2**31 - 1, description="Store an intermediate image every N iterations; 0: none.")),
    output_format=(Literal["png", "jpeg", "webp"], Field("png", description="Format of the result and snapshots.")),
)


def effective_params(params: BaseModel, settings: Settings, styles: int) -> dict[str, Any]:
    """What the job will run: the client's values within the operator's limits, every automatic
    choice resolved. Raises ParamError naming the field."""
    given = params.model_dump(exclude_unset=True, exclude=set(SERVICE_FIELDS))
    given.setdefault("size", min(Params.size, settings.max_size))
    engine = resolve(Params.from_dict(given), styles)  # the table's checks first, as on the command line
    for f in fields(Params):
        if spec(f).service_choices and getattr(engine, f.name) not in spec(f).service_choices:
            raise ParamError(f.name, f"must be one of {', '.join(spec(f).service_choices)}, not {given[f.name]!r}")
    if engine.size > settings.max_size:
        raise ParamError("size", f"must be at most {settings.max_size} on this server, not {engine.size}")
    if engine.iterations > settings.max_iterations:
        raise ParamError("iterations", f"{engine.iterations} iterations exceed this server's limit of {settings.max_iterations}")
    return engine.to_dict() | {"snapshot_every": params.snapshot_every, "output_format": params.output_format}


def engine_params(effective: dict[str, Any]) -> Params:
    """The stored effective parameters back as the engine's `Params`."""
    return Params.from_dict({k: v for k, v in effective.items() if k not in SERVICE_FIELDS})


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


class PredictionOut(BaseModel):
    """What `shared.capacity` predicted at submission, for the device kind of the live workers."""

    device: str = Field(description="The device kind predicted for: `cuda` or `cpu`.")
    seconds: float = Field(description="Run time once a worker starts the job (warm): a queued job's ETA.")
    memory_mb: float = Field(description="Peak device memory, MiB.")
    measured: bool = Field(description="The model was calibrated on that kind of device; false: estimated.")


class QueueOut(BaseModel):
    """Where a queued job stands, worked out when it is read: workers take the oldest job first,
    so its start is when the live workers have done the running jobs (their own ETAs) and the
    predicted work of the jobs ahead of it. Batching makes small jobs start sooner than this."""

    position: int = Field(description="Queued jobs ahead of it, of every account: 0, it is next.")
    workers: int | None = Field(description="Live workers taking jobs from the queue; null when Redis cannot say.")
    starts_in_seconds: float | None = Field(description="Predicted seconds until a worker starts it; null with no "
                                                        "live worker, or no prediction to go by.")
    eta_seconds: float | None = Field(description="Predicted seconds until it ends: its start, then its "
                                                  "`prediction.seconds`.")


class RunOut(BaseModel):
    """How the attempt that finished a job ran, to set against its `prediction`. (Which worker ran
    it is the operators' to see, on the admin job page.)"""

    device: str = Field(description="`cpu`, `cuda` or `cuda:N`.")
    device_name: str = Field(description="The GPU's name, or the CPU and its cores.")
    precision: str = Field(description="What the network passes ran in, `bf16` or `fp32`: what `precision auto` chose.")
    seconds: float = Field(description="The run on the worker, from its start (or resume) to the stored result.")
    peak_memory_mb: int = Field(description="Peak device memory, MiB; on a CPU, the worker process's peak "
                                            "resident set.")
    batch_size: int = Field(description="How many jobs ran together as one batch, sharing this time and memory.")


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
    prediction: PredictionOut | None = Field(description="Predicted run time and peak memory; null when no worker "
                                                         "was live at submission.")
    queue: QueueOut | None = Field(None, description="Where it stands while queued, as of this response; null once "
                                                     "it started.")
    run: RunOut | None = Field(description="How it ran, once it succeeded; null before, and for jobs that ended "
                                           "before this was recorded.")
    data_removed: bool = Field(description="The job's result and snapshots were removed under the retention policy "
                                           "(ATELIER_RETENTION_DAYS, or the account's own); the job itself stays.")
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


def job_out(job: Job, queue: QueueOut | None = None) -> JobOut:
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
        attempts=job.attempts, prediction=PredictionOut(**job.prediction) if job.prediction else None, queue=queue,
        run=RunOut.model_validate(job.result_run) if job.result_run else None,
        data_removed=job.data_removed_at is not None, urls=urls,
    )
