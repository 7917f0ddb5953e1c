"""The System page: queues, workers and their devices, throughput and latency, readiness, and
disk usage and retention per account (`api.admin.storage`)."""
from __future__ import annotations

import logging
from typing import Any

from flask import current_app, render_template
from kombu.exceptions import OperationalError
from redis import RedisError
from sqlalchemy import func, select

from api.app import services
from api.admin.blueprint import bp
from api.admin.stats import all_windows
from api.admin.storage import human_bytes, usage
from shared import capacity
from shared.models import Job
from shared.broker import RUN_JOB, queue_depths
from shared.devices import read_devices

log = logging.getLogger(__name__)
INSPECT_TIMEOUT = 1.0  # seconds to wait for workers' replies; a busy worker still answers (its main process does)


def _workers() -> list[dict[str, Any]]:
    """Online workers (those answering `inspect active` in time), what each runs, on what device,
    predicted by which capacity model."""
    try:
        active = current_app.extensions["celery"].control.inspect(timeout=INSPECT_TIMEOUT).active() or {}
        devices = read_devices(services().redis)
    except (OperationalError, RedisError, OSError) as exc:
        log.warning("system page: cannot reach the workers: %s", exc)
        return []
    workers = []
    for name in sorted(active):
        running = [{"task": t.get("name"), "job_id": (t.get("args") or [None])[0] if t.get("name") == RUN_JOB else None,
                    "started": t.get("time_start")} for t in active[name]]
        device = devices.get(name)
        workers.append({"name": name, "running": running, "device": device,
                        "model": device and _capacity_model(capacity.Device.from_report(device))})
    return workers


def _capacity_model(device: capacity.Device) -> dict[str, Any]:
    """The capacity model that predicts jobs on `device`, and whether it was measured on such a
    device or estimated (then `bench/calibrate.py` should run there)."""
    m = capacity.model(device.kind, device.precision)
    return {"key": capacity.model_key(device.kind, device.precision), "measured": m.measured, "source": m.source}


@bp.get("/system")
def system() -> str:
    with services().db.session() as db:
        windows = all_windows(db)
        by_status = dict(db.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        accounts, stored = usage(db)
    return render_template("admin/system.html", ready=services().readiness(), queues=queue_depths(services().redis),
                           workers=_workers(), windows=windows, by_status=by_status, accounts=accounts, stored=stored,
                           human_bytes=human_bytes, default_retention=services().settings.retention_days)
