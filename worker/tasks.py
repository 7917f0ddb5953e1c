"""The GPU task: run one job (`worker.runner`). Thin: the work is in the runner.

The task's Celery state says how the job ended, for Flower and other event consumers: a
succeeded job is a successful task; a failed one raises `JobUnsuccessful` (an expected error:
state FAILURE, no traceback logged); a canceled one is announced as revoked (Celery's word for
canceled) and ignored, so it never shows as a success. A delivery that did not end the job
(a duplicate, a hand-back at shutdown, a lost lease) is a success: it did what it should.
"""
from __future__ import annotations

import logging

from celery import Task, current_app, shared_task
from celery.exceptions import Ignore
from kombu.exceptions import OperationalError
from redis import RedisError

from shared.broker import RUN_JOB
from shared.models import JobStatus
from worker.context import current_services
from worker.runner import JobRun

log = logging.getLogger(__name__)


class JobUnsuccessful(Exception):
    """The job ended `failed`; the message is its error code."""


@shared_task(bind=True, name=RUN_JOB, ignore_result=True, throws=(JobUnsuccessful,))
def run_job(self: Task, job_id: str) -> None:
    run = JobRun(current_services(), current_app, job_id, worker=self.request.hostname)
    run.execute()
    if run.outcome is None:
        return
    status, error_code = run.outcome
    if status is JobStatus.FAILED:
        raise JobUnsuccessful(f"job {job_id} failed: {error_code}")
    if status is JobStatus.CANCELED:
        try:
            self.send_event("task-revoked", terminated=False, signum=None, expired=False)
        except (OperationalError, RedisError, OSError) as exc:  # events are for watchers; the job is recorded
            log.warning("job %s: canceled, but the task-revoked event was not sent: %s", job_id, exc)
        raise Ignore()
