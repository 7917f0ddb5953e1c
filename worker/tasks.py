"""The GPU task: run one job (`worker.runner`). Thin: the work is in the runner."""
from __future__ import annotations

from celery import current_app, shared_task

from shared.broker import RUN_JOB
from worker.context import current_services
from worker.runner import JobRun


@shared_task(name=RUN_JOB, ignore_result=True, bind=True)
def run_job(self, job_id: str) -> None:
    JobRun(current_services(), current_app, job_id, worker=self.request.hostname).execute()
