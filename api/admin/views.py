"""What the dashboard shows of a job, as plain JSON-ready dicts: the jobs table's rows and a
job page's live state. The pages' scripts render exactly these."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import url_for

from shared.models import Job, LossPoint, utcnow
from shared.schemas import QueueOut

LOSS_SERIES = ("content", "style", "total")


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """From start to end (or to now, while it lasts); None if it never started."""
    if start is None:
        return None
    return round(((end or utcnow()) - start).total_seconds(), 1)


def queue_wait(job: Job) -> float | None:
    return seconds_between(job.created_at, job.started_at or job.finished_at)


def run_time(job: Job) -> float | None:
    return seconds_between(job.started_at, job.finished_at)


def job_row(job: Job, owner: str, queue: QueueOut | None) -> dict[str, Any]:
    progress = job.progress or {}
    return {
        "id": job.id, "status": job.status, "owner": owner, "created_at": job.created_at.isoformat(),
        "size": job.params.get("size"), "iterations": job.params.get("iterations"),
        "percent": progress.get("percent", 100.0 if job.status == "succeeded" else 0.0),
        "queue_wait": queue_wait(job), "run_time": run_time(job), "attempts": job.attempts,
        "queue": queue.model_dump() if queue is not None else None, "url": url_for("admin.job", job_id=job.id),
    }


def job_state(job: Job, losses: list[LossPoint], queue: QueueOut | None) -> dict[str, Any]:
    """Everything on a job page that changes while it waits or runs."""
    progress = job.progress or {}
    result = None
    if job.result_key is not None:
        result = {"url": url_for("admin.result", job_id=job.id), "width": job.result_width,
                  "height": job.result_height, "quality": job.result_quality or {}}
    return {
        "id": job.id, "status": job.status, "attempts": job.attempts,
        "cancel_requested": job.cancel_requested_at is not None,
        "percent": progress.get("percent", 100.0 if job.status == "succeeded" else 0.0),
        "iteration": progress.get("iteration", 0), "total": progress.get("total", job.params.get("iterations")),
        "eta_seconds": progress.get("eta_seconds") if job.status == "running" else None,
        "iterations_per_second": progress.get("iterations_per_second"),
        "queue_wait": queue_wait(job), "run_time": run_time(job),
        "queue": queue.model_dump() if queue is not None else None,
        "losses": [[p.iteration, *(p.losses.get(k) for k in LOSS_SERIES)] for p in losses],
        "snapshots": [{"iteration": s.iteration, "url": url_for("admin.snapshot", job_id=job.id, iteration=s.iteration)}
                      for s in job.snapshots],
        "result": result, "run": job.result_run,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
    }
