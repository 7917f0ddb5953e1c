"""Throughput and latency of the last hour and day, computed from the jobs table alone
(portable across SQLite and PostgreSQL: percentiles are taken in Python over the window)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, utcnow

WINDOWS = {"last hour": timedelta(hours=1), "last day": timedelta(days=1)}


@dataclass(frozen=True)
class WindowStats:
    name: str
    finished: int
    jobs_per_hour: float
    failure_rate: float | None      # failed / (succeeded + failed); canceled jobs are not failures
    run_median: float | None
    run_p95: float | None
    wait_median: float | None
    wait_p95: float | None


def _median_p95(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], values[0]
    return statistics.median(values), statistics.quantiles(values, n=20, method="inclusive")[-1]


def window_stats(session: Session, name: str, span: timedelta) -> WindowStats:
    since = utcnow() - span
    rows = session.execute(
        select(Job.status, Job.created_at, Job.started_at, Job.finished_at)
        .where(or_(Job.finished_at >= since, Job.started_at >= since))).all()
    finished = [r for r in rows if r.finished_at is not None and r.finished_at >= since]
    succeeded = sum(r.status == JobStatus.SUCCEEDED.value for r in finished)
    failed = sum(r.status == JobStatus.FAILED.value for r in finished)
    runs = [(r.finished_at - r.started_at).total_seconds() for r in finished
            if r.started_at is not None and r.status == JobStatus.SUCCEEDED.value]
    waits = [(r.started_at - r.created_at).total_seconds() for r in rows
             if r.started_at is not None and r.started_at >= since]
    run_median, run_p95 = _median_p95(runs)
    wait_median, wait_p95 = _median_p95(waits)
    return WindowStats(name=name, finished=len(finished), jobs_per_hour=len(finished) / (span.total_seconds() / 3600),
                       failure_rate=failed / (succeeded + failed) if succeeded + failed else None,
                       run_median=run_median, run_p95=run_p95, wait_median=wait_median, wait_p95=wait_p95)


def all_windows(session: Session) -> list[WindowStats]:
    return [window_stats(session, name, span) for name, span in WINDOWS.items()]
