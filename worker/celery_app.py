"""The worker's Celery app, configured from `ATELIER_*` variables (see shared.config).

    celery -A worker.celery_app worker -Q gpu --concurrency 1         # one per GPU
    celery -A worker.celery_app worker -Q maintenance --beat --pool threads --concurrency 8  # sweeps, webhooks
"""
from shared.config import Settings
from worker.broker import create_celery

app = create_celery(Settings.from_env())
