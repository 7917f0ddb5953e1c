"""The maintenance worker's Celery app: the sweeps and webhook deliveries, never the engine, so
this process does not load torch.

    celery -A worker.maintenance_app worker -Q maintenance --beat --pool threads --concurrency 8
"""
from shared.broker import create_celery
from shared.config import Settings

app = create_celery(Settings.from_env(), include=("worker.maintenance_tasks",))
