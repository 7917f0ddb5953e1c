"""The GPU worker's Celery app, configured from `ATELIER_*` variables (see shared.config). It runs
jobs (and, given `-Q gpu,maintenance`, the maintenance tasks too):

    celery -A worker.celery_app worker -Q gpu --concurrency 1 -n gpu@%h        # one per GPU
"""
from shared.broker import create_celery
from shared.config import Settings

app = create_celery(Settings.from_env(), include=("worker.tasks", "worker.presence", "worker.maintenance_tasks"))
