"""`GET /metrics`: Prometheus text format, for an admin session or `Authorization: Bearer
<ATELIER_METRICS_TOKEN>`; and the request metrics of every route (`shared.metrics`).

Besides what the processes counted, each scrape asks the database for jobs by status, Redis for
the depth of each queue, and both for the queue's predicted work and the wait a new job would
face (`queue_standing.backlog`), so those are true for the whole deployment whichever API
process answers. A dependency that is down leaves its family out (logged), never fails the
scrape.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, g, request, session
from prometheus_client.core import GaugeMetricFamily
from redis import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from api.app import services
from api.errors import ProblemError
from api.queue_standing import backlog
from shared import metrics
from shared.broker import queue_depths
from shared.models import Job, JobStatus, Operator

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)


class DeploymentCollector:
    """Jobs by status and the queue's work and wait (SQL, and the live workers in Redis), and
    queue depth (Redis), read at scrape time."""

    def collect(self):
        try:
            with services().db.session() as db:
                counts = dict(db.execute(select(Job.status, func.count()).group_by(Job.status)).all())
                work, wait = backlog(db, services().redis)
            jobs = GaugeMetricFamily("atelier_jobs", "Jobs by status", labels=["status"])
            for status in JobStatus:
                jobs.add_metric([status.value], counts.get(status.value, 0))
            yield jobs
            if work is not None:
                yield GaugeMetricFamily("atelier_queue_work_seconds", "Predicted run seconds of every queued job, "
                                        "at the workers' pace", value=work)
            if wait is not None:
                yield GaugeMetricFamily("atelier_queue_wait_seconds", "How long a job submitted now would wait to "
                                        "start, on the live workers", value=wait)
        except SQLAlchemyError as exc:
            log.warning("metrics: jobs by status and the queue's work left out: database unavailable (%s)",
                        type(exc).__name__)
        try:
            depths = queue_depths(services().redis)
        except (RedisError, OSError) as exc:
            log.warning("metrics: queue depth left out: %s", exc)
            return
        queues = GaugeMetricFamily("atelier_queue_depth", "Messages waiting in each Celery queue", labels=["queue"])
        for queue, depth in depths.items():
            if depth is not None:
                queues.add_metric([queue], depth)
        yield queues


def _allowed() -> bool:
    if metrics.authorized(request.headers.get("Authorization"), services().settings.metrics_token):
        return True
    operator_id = session.get("operator_id")
    if operator_id is None:
        return False
    with services().db.session() as db:
        return db.get(Operator, operator_id) is not None


@bp.get("/metrics")
def scrape() -> Response:
    if not _allowed():
        raise ProblemError(401, "Unauthorized", "sign in at /admin or send Authorization: Bearer "
                           "<ATELIER_METRICS_TOKEN>", headers={"WWW-Authenticate": "Bearer"})
    return Response(metrics.exposition([DeploymentCollector()]), mimetype=None,
                    headers={"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"})


def init_app(app: Flask) -> None:
    """Count every request by route template (never the raw path: job ids would explode the labels)."""
    app.register_blueprint(bp)

    @app.before_request
    def _start() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
            metrics.REQUESTS.labels(route, request.method, str(response.status_code)).inc()
            metrics.REQUEST_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
        return response
