"""`atelier worker`: this machine's GPU workers, one Celery worker process per visible GPU (each
pinned to its device with CUDA_VISIBLE_DEVICES, so it sees exactly one, `cuda`), or one CPU
worker where there is none, kept up by `shared.supervisor` as `atelier run` keeps its children.

The workers share a Prometheus multiprocess directory of their own, served on
`ATELIER_WORKER_METRICS_PORT`: one scrape target per machine, whatever the number of GPUs.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from shared import metrics
from shared.broker import GPU_QUEUE
from shared.config import Settings
from shared.supervisor import Child, Supervisor

log = logging.getLogger("atelier.worker")

STOP_GRACE_SECONDS = 60.0  # a running job ends its iteration, saves its checkpoint, is handed back


class NoDevice(Exception):
    """`--device cuda` on a machine where no GPU is visible."""


def visible_gpus(device: str, environ: Mapping[str, str], count: Callable[[], int]) -> list[str]:
    """The GPUs to run a worker on, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs): those the
    variable lists if set, else every device `count()` (CUDA's device count) finds; none for
    `cpu`. `cuda:N` means that one device."""
    if device == "cpu":
        return []
    if device.startswith("cuda:"):
        return [device.removeprefix("cuda:")]
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        gpus = [entry.strip() for entry in listed.split(",") if entry.strip()]
        gpus = [] if gpus[:1] == ["-1"] else gpus
    else:
        gpus = [str(index) for index in range(count())]
    if device == "cuda" and not gpus:
        raise NoDevice("ATELIER_DEVICE=cuda, but no GPU is visible (CUDA_VISIBLE_DEVICES, drivers)")
    return gpus


def worker_children(gpus: list[str], queues: str = GPU_QUEUE, python: str = sys.executable) -> list[Child]:
    """One `celery worker` per GPU (or one on the CPU), each with its own node name and device."""
    celery = [python, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues, "--concurrency", "1",
              "--loglevel", "INFO"]
    if not gpus:
        return [Child("cpu", [*celery, "-n", "cpu@%h"], env={"ATELIER_DEVICE": "cpu"})]
    return [Child(f"gpu{index}", [*celery, "-n", f"gpu{index}@%h"],
                  env={"CUDA_VISIBLE_DEVICES": gpu, "ATELIER_DEVICE": "cuda"})
            for index, gpu in enumerate(gpus)]


def cuda_device_count() -> int:
    import torch  # only here: the supervisor itself runs no model

    return torch.cuda.device_count()


def run(settings: Settings, device: str, queues: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        gpus = visible_gpus(device, os.environ, cuda_device_count)
    except NoDevice as exc:
        print(f"atelier worker: error: {exc}", file=sys.stderr)
        return 2
    children = worker_children(gpus, queues)
    own_directory = metrics.multiprocess_dir() is None
    directory = metrics.multiprocess_dir() or str(metrics.fresh_dir(Path(tempfile.mkdtemp(prefix="atelier-metrics-"))))
    env = os.environ | settings.to_env() | {metrics.MULTIPROC_ENV: directory}
    os.environ[metrics.MULTIPROC_ENV] = directory  # this process serves what its children write
    server = metrics.serve(settings.worker_metrics_port, settings.metrics_token) \
        if settings.worker_metrics_port else None

    def started() -> None:
        where = ", ".join(f"{c.name} (CUDA_VISIBLE_DEVICES={c.env['CUDA_VISIBLE_DEVICES']})" if gpus else c.name
                          for c in children)
        port = f"; metrics on :{settings.worker_metrics_port}/metrics" if server else ""
        print(f"atelier worker: {len(children)} worker(s): {where}; queue {queues}{port}. Ctrl-C stops them.",
              flush=True)

    try:
        return Supervisor(children, env, grace_seconds=STOP_GRACE_SECONDS).run(started=started)
    finally:
        if server is not None:
            server.shutdown()
        if own_directory:
            shutil.rmtree(directory, ignore_errors=True)
