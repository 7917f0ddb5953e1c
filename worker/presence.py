"""Each GPU worker's pool child warms its device up and reports it (`shared.devices`), and its pace
on it once it has run jobs, for the dashboard's System page, the capacity check and prediction
at submission and the device memory metric; the main process marks the worker alive on every
Celery heartbeat, and gone when it stops; the pool child leaves the live metrics when it exits."""
from __future__ import annotations

import logging
import os
import socket
from collections import deque

import redis
import torch
from celery import current_app
from celery.signals import (celeryd_after_setup, heartbeat_sent, worker_process_init, worker_process_shutdown,
                            worker_shutdown)

from shared import capacity, metrics
from shared.devices import UNAVAILABLE, mark_alive, mark_gone, report_device
from shared.services import Services
from worker.engine import DeviceError, resolve_device, resolve_precision, warm_up

log = logging.getLogger(__name__)

_node: dict[str, str] = {}  # set in the worker's main process before the pool forks
_main: dict[str, Services] = {}  # the main process's own, made at its first heartbeat (after the fork)
_reported: dict[str, object] = {}  # the pool child's device report, sent again with each new pace
PACE_JOBS = 9
_runs: deque[tuple[float, float]] = deque(maxlen=PACE_JOBS)  # the pool child's last lone jobs: run, model's seconds


def describe(device: str) -> dict[str, object]:
    """`{"device", "name", "memory_bytes", "precision"}` for a settings device (auto | cpu |
    cuda[:N]); a CPU's memory is the machine's. The precision is what jobs run in by default
    there (`precision auto`), which differs between CPUs."""
    try:
        resolved = resolve_device(device)
    except DeviceError as exc:
        return {"device": device, "name": f"{UNAVAILABLE}{exc}", "memory_bytes": None, "precision": None}
    precision = resolve_precision("auto", resolved)
    if resolved == "cpu":
        return {"device": "cpu", "name": f"CPU ({os.cpu_count()} cores)",
                "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "precision": precision}
    props = torch.cuda.get_device_properties(torch.device(resolved))
    return {"device": resolved, "name": props.name, "memory_bytes": props.total_memory, "precision": precision}


def node_name() -> str:
    """This worker's Celery node name (`gpu0@host`), the `worker` label of its metrics."""
    return _node.get("name") or socket.gethostname()


@celeryd_after_setup.connect
def _remember_node(sender: str, **_kwargs) -> None:
    _node["name"] = sender


@worker_process_init.connect
def _warm_up_and_report(**_kwargs) -> None:
    """The pool child warms its device up, then reports it. Celery sends it no job before this
    returns (`worker_proc_alive_timeout` gives it the time), so a worker's first job runs at the
    pace of the next ones, and a worker shows as live once it is ready."""
    if "name" not in _node:
        return
    settings = current_app.conf.atelier_settings
    description = describe(settings.device)
    if not str(description["name"]).startswith(UNAVAILABLE):
        _warm_up(str(description["device"]))
    services = Services(settings)
    if description["memory_bytes"] is not None:
        metrics.DEVICE_MEMORY.labels(_node["name"], description["device"], "total").set(description["memory_bytes"])
    _reported.update(description)
    try:
        report_device(services.redis, _node["name"], description)
    except redis.RedisError as exc:
        log.warning("could not report this worker's device: %s", exc)
    finally:
        services.redis.close()


def _warm_up(device: str) -> None:
    try:
        seconds = warm_up(device)
    except Exception as exc:  # a job on this device meets the same error, and fails with it
        log.warning("could not warm up %s: %s", device, exc)
    else:
        log.info("warmed up on %s in %.1f s", device, seconds)


def paced(client: redis.Redis, seconds: float, predicted: float) -> None:
    """A lone job ran `seconds`, the capacity model's `predicted`. The worker's pace from its last
    PACE_JOBS such runs (`capacity.pace`) goes into its device report: the API predicts new jobs,
    and a queued job's start, at this machine's speed rather than the calibration machine's."""
    _runs.append((seconds, predicted))
    if "name" not in _node or not _reported:
        return
    try:
        report_device(client, _node["name"], _reported | {"pace": round(capacity.pace(_runs), 3)})
    except redis.RedisError as exc:
        log.warning("could not report this worker's pace: %s", exc)


@heartbeat_sent.connect
def _alive(**_kwargs) -> None:
    if "name" not in _node:
        return
    if "services" not in _main:
        _main["services"] = Services(current_app.conf.atelier_settings)
    services = _main["services"]
    try:
        mark_alive(services.redis, _node["name"])
    except redis.RedisError as exc:
        log.warning("could not mark this worker alive: %s", exc)


@worker_shutdown.connect
def _gone(**_kwargs) -> None:
    if "name" in _node and "services" in _main:
        try:
            mark_gone(_main["services"].redis, _node["name"])
        except redis.RedisError as exc:
            log.warning("could not mark this worker gone: %s", exc)


@worker_process_shutdown.connect
def _leave_metrics(**_kwargs) -> None:
    metrics.process_exited(os.getpid())
