"""Where a queued job stands (`QueueOut`): how many jobs are ahead of it, and when it is predicted
to start and to end.

What it goes by: each queued job's prediction at submission (`shared.capacity`), each running
job's own ETA from its progress (or its prediction, less the time it has run), and the live
workers in Redis. A job that has no prediction (no worker was live when it came) counts as long
as this one, or as the average job ahead when this one has none either.

Read three ways, to the same figures: `standing`, exact as of the request, for a job's response
(two queries, for queued jobs only); `standings`, as exact, for a page of a list (two queries for
the whole page); and a `Board` of the whole queue, read at most once per
`max_age` by each API process, for the event streams of queued jobs, so that a thousand such
streams cost one read of the queue between them, not a thousand. `backlog` is the same
arithmetic for a job submitted now, at the end of the queue: the deployment's metrics, to scale
workers on.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from redis import Redis, RedisError
from sqlalchemy import Row, and_, bindparam, case, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared import capacity, lifecycle
from shared.db import Database
from shared.devices import working_devices
from shared.models import Job, JobStatus, utcnow
from shared.schemas import QueueOut

log = logging.getLogger(__name__)
PREDICTED_SECONDS = Job.prediction["seconds"].as_float()
# a poll of a queued job runs these: built once, as `api.lookup.LOAD_JOB` is
AHEAD = select(func.count(), func.count(PREDICTED_SECONDS), func.coalesce(func.sum(PREDICTED_SECONDS), 0.0)).where(
    Job.status == JobStatus.QUEUED.value,
    or_(Job.created_at < bindparam("created_at"),
        and_(Job.created_at == bindparam("created_at"), Job.id < bindparam("id"))))
RUNNING = select(Job.lease_owner, Job.started_at, Job.progress, Job.prediction) \
    .where(Job.status == JobStatus.RUNNING.value)
QUEUE = select(Job.created_at, Job.id, PREDICTED_SECONDS).where(Job.status == JobStatus.QUEUED.value) \
    .order_by(Job.created_at, Job.id)
# a list's queued jobs: the queued jobs through each, in a window, less the job itself (SQLite runs a
# frame that ends at the current row in half the time of one that ends before it)
_THROUGH = {"order_by": (Job.created_at, Job.id), "rows": (None, 0)}
_EACH = select(Job.id, (func.count().over(**_THROUGH) - 1).label("ahead"),
               (func.count(PREDICTED_SECONDS).over(**_THROUGH) - case((PREDICTED_SECONDS.is_(None), 0), else_=1))
               .label("predicted"),
               (func.coalesce(func.sum(PREDICTED_SECONDS).over(**_THROUGH), 0.0) - func.coalesce(PREDICTED_SECONDS, 0.0))
               .label("seconds")).where(
    Job.status == JobStatus.QUEUED.value,
    or_(Job.created_at < bindparam("created_at"),
        and_(Job.created_at == bindparam("created_at"), Job.id <= bindparam("id")))).subquery()
AHEAD_OF_EACH = select(_EACH).where(_EACH.c.id.in_(bindparam("ids", expanding=True)))
QUEUED_WORK = select(func.count(), func.count(PREDICTED_SECONDS), func.coalesce(func.sum(PREDICTED_SECONDS), 0.0)) \
    .where(Job.status == JobStatus.QUEUED.value)


def standing(session: Session, client: Redis, job: Job) -> QueueOut | None:
    """Where `job` stands in the queue now; None unless it is queued."""
    if job.state is not JobStatus.QUEUED:
        return None
    ahead, predicted, ahead_seconds = session.execute(AHEAD, {"created_at": job.created_at, "id": job.id}).one()
    workers = _workers(client)
    running = session.execute(RUNNING).all() if workers else []
    return _place(ahead, predicted, ahead_seconds, _seconds(job.prediction), running, utcnow(), workers)


def backlog(session: Session, client: Redis) -> tuple[float | None, float | None]:
    """The whole queue, for autoscaling: the predicted run seconds of every queued job (one without
    a prediction counted as the average one), and how long a job submitted now would wait to
    start (the standing of a job at the end of the queue). Each None when it cannot be told: the
    work when no queued job has a prediction, the wait also with no live worker."""
    queued, predicted, seconds = session.execute(QUEUED_WORK).one()
    typical = seconds / predicted if predicted else (0.0 if not queued else None)
    if typical is None:
        return None, None
    workers = _workers(client)
    running = session.execute(RUNNING).all() if workers else []
    place = _place(queued, predicted, seconds, typical, running, utcnow(), workers)
    return seconds + (queued - predicted) * typical, place.starts_in_seconds


@dataclass(frozen=True)
class QueueRead:
    """The queue read at one moment: the queued jobs' order and their predicted seconds so far,
    the running jobs and the live workers; any queued job's standing follows from it."""

    keys: list[tuple[datetime, str]]
    predicted: list[int]  # of the first i queued jobs, how many have a prediction
    seconds: list[float]  # ...and their predicted seconds
    running: Sequence[Row]
    read_at: datetime
    workers: int | None

    def place(self, created_at: datetime, job_id: str, prediction: dict[str, Any] | None) -> QueueOut:
        ahead = bisect.bisect_left(self.keys, (created_at, job_id))
        return _place(ahead, self.predicted[ahead], self.seconds[ahead], _seconds(prediction), self.running,
                      self.read_at, self.workers)


def read_queue(session: Session, client: Redis) -> QueueRead:
    """The whole queue, for a `Board`."""
    queued = session.execute(QUEUE).all()
    running, read_at = session.execute(RUNNING).all(), utcnow()
    return QueueRead(keys=[(created_at, job_id) for created_at, job_id, _ in queued],
                     predicted=[0, *itertools.accumulate(seconds is not None for _, _, seconds in queued)],
                     seconds=[0.0, *itertools.accumulate(seconds or 0.0 for _, _, seconds in queued)],
                     running=running, read_at=read_at, workers=_workers(client))


def standings(session: Session, client: Redis, jobs: Sequence[Job]) -> dict[str, QueueOut]:
    """Where each of `jobs` that is queued stands, by job id: a page of a list, in one query that
    sums the jobs ahead of each in the database (`AHEAD_OF_EACH`), then the running jobs."""
    queued = {job.id: job for job in jobs if job.state is JobStatus.QUEUED}
    if not queued:
        return {}
    last_created, last_id = max((job.created_at, job.id) for job in queued.values())
    ahead = session.execute(AHEAD_OF_EACH, {"created_at": last_created, "id": last_id, "ids": list(queued)}).all()
    workers = _workers(client)
    running = session.execute(RUNNING).all() if workers else []
    now = utcnow()
    return {job_id: _place(count, predicted, seconds, _seconds(queued[job_id].prediction), running, now, workers)
            for job_id, count, predicted, seconds in ahead}


class Board:
    """The queue as this process last read it (`QueueRead`), read again once it is `max_age`
    seconds old."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._queue: QueueRead | None = None  # none read yet

    def standing(self, db: Database, client: Redis, created_at: datetime, job_id: str,
                 prediction: dict[str, Any] | None, fresh: bool = False) -> QueueOut | None:
        """Where a job that is queued stands, as of the last read, or of a new one if `fresh` (a job
        just put back in the queue, which the last read saw running); None if it cannot be read now."""
        with self._lock:
            if fresh or self._queue is None or time.monotonic() - self._read_at >= self.max_age:
                try:
                    with db.session() as session:
                        self._queue = read_queue(session, client)
                except SQLAlchemyError as exc:
                    log.warning("the queue cannot be read now: %s", exc)
                    return None
                self._read_at = time.monotonic()
            return self._queue.place(created_at, job_id, prediction)


def _place(ahead: int, predicted: int, ahead_seconds: float, own: float | None, running: Sequence[Row],
           read_at: datetime, workers: int | None) -> QueueOut:
    """The standing of a job with `ahead` queued jobs before it, `predicted` of them predicted to
    take `ahead_seconds` in all, and `own` seconds itself; `running`: the running jobs as read at
    `read_at`."""
    typical = own if own is not None else (ahead_seconds / predicted if predicted else None)
    if not workers or typical is None:
        return QueueOut(position=ahead, workers=workers, starts_in_seconds=None, eta_seconds=None)
    busy: dict[str | None, float] = {}  # a batch is several running jobs of one worker: it is free after the last
    now = utcnow()
    for owner, started_at, progress, prediction in running:
        worker = owner and lifecycle.owner_process(owner)
        busy[worker] = max(busy.get(worker, 0.0), _left(started_at, progress, prediction, typical, read_at, now))
    starts = capacity.starts_in(list(busy.values()), workers, ahead_seconds + (ahead - predicted) * typical)
    return QueueOut(position=ahead, workers=workers, starts_in_seconds=round(starts, 1),
                    eta_seconds=round(starts + own, 1) if own is not None else None)


def _seconds(prediction: dict[str, Any] | None) -> float | None:
    return float(prediction["seconds"]) if prediction else None


def _left(started_at: datetime | None, progress: dict[str, Any] | None, prediction: dict[str, Any] | None,
          typical: float, read_at: datetime, now: datetime) -> float:
    """A running job's seconds left at `now`: its own ETA (as read at `read_at`) once it reports
    progress; before that, its prediction less the time since it started."""
    if progress and progress.get("eta_seconds") is not None:
        return max(0.0, float(progress["eta_seconds"]) - (now - read_at).total_seconds())
    ran = (now - started_at).total_seconds() if started_at else 0.0
    return max(0.0, (_seconds(prediction) or typical) - ran)


def _workers(client: Redis) -> int | None:
    try:
        return len(working_devices(client))
    except (RedisError, OSError) as exc:
        log.warning("queue standing without an ETA: cannot read the workers' presence: %s", exc)
        return None
