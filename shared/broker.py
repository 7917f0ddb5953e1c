"""Celery configuration, task names and queues, shared by the API (which only sends) and workers
(which name the task modules they run: `worker.celery_app`, `worker.maintenance_app`).

Celery only carries "run job X" messages; state and results live in SQL. Long GPU jobs go to
the `gpu` queue, small work (the sweeps, webhook deliveries) to `maintenance`, so a busy GPU
worker never delays it.
"""
from __future__ import annotations

import logging

from celery import Celery
from kombu import Queue
from kombu.exceptions import OperationalError
from redis import Redis, RedisError

from shared import lifecycle
from shared.config import Settings
from shared.db import Database

log = logging.getLogger(__name__)

RUN_JOB = "atelier.run_job"
SWEEP = "atelier.sweep"
DELIVER_WEBHOOK = "atelier.deliver_webhook"
SWEEP_WEBHOOKS = "atelier.sweep_webhooks"
SWEEP_RETENTION = "atelier.sweep_retention"
GPU_QUEUE = "gpu"
MAINTENANCE_QUEUE = "maintenance"


def create_celery(settings: Settings, include: tuple[str, ...] = ()) -> Celery:
    """The app for `settings`; `include`: the task modules a worker runs (none for a sender)."""
    if not settings.redis_url:
        raise RuntimeError("ATELIER_REDIS_URL is not set (`atelier run` starts an embedded Redis and sets it)")
    app = Celery("atelier", broker=settings.redis_url, include=list(include))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,                  # a job's message is acked when the job ends...
        task_reject_on_worker_lost=True,      # ...and requeued if the worker process dies mid-job
        worker_prefetch_multiplier=1,         # one GPU job at a time per process, none hoarded
        worker_proc_alive_timeout=120,        # a pool child warms its device up before it is up (worker.presence)
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        task_queues=[Queue(GPU_QUEUE), Queue(MAINTENANCE_QUEUE)],
        task_default_queue=MAINTENANCE_QUEUE,
        task_routes={RUN_JOB: {"queue": GPU_QUEUE}, SWEEP: {"queue": MAINTENANCE_QUEUE},
                     DELIVER_WEBHOOK: {"queue": MAINTENANCE_QUEUE}, SWEEP_WEBHOOKS: {"queue": MAINTENANCE_QUEUE},
                     SWEEP_RETENTION: {"queue": MAINTENANCE_QUEUE}},
        beat_schedule={"sweep": {"task": SWEEP, "schedule": settings.sweep_seconds,
                                 "options": {"expires": settings.sweep_seconds}},
                       "sweep-webhooks": {"task": SWEEP_WEBHOOKS, "schedule": settings.sweep_seconds,
                                          "options": {"expires": settings.sweep_seconds}},
                       "sweep-retention": {"task": SWEEP_RETENTION, "schedule": settings.sweep_seconds,
                                           "options": {"expires": settings.sweep_seconds}}},
        worker_hijack_root_logger=False,
        worker_send_task_events=True,         # Flower and `celery events` see every task (-E by default)
        task_send_sent_event=True,            # ...from the moment it is sent
    )
    app.conf.atelier_settings = settings
    return app


def queue_depths(client: Redis) -> dict[str, int | None]:
    """Messages waiting in each Celery queue (a Redis list per queue with the Redis transport);
    None for a queue that could not be read."""
    depths: dict[str, int | None] = {}
    for queue in (GPU_QUEUE, MAINTENANCE_QUEUE):
        try:
            depths[queue] = client.llen(queue)
        except (RedisError, OSError):
            depths[queue] = None
    return depths


def enqueue(celery: Celery, db: Database, job_id: str) -> bool:
    """Hand a committed job to the broker. On failure the job stays queued and the sweep retries."""
    try:
        celery.send_task(RUN_JOB, args=[job_id], queue=GPU_QUEUE)
    except (OperationalError, RedisError, OSError) as exc:
        log.warning("job %s is queued but not yet sent to the broker (%s); the sweep will retry", job_id, exc)
        return False
    with db.session() as session:
        lifecycle.mark_enqueued(session, job_id)
    return True

