"""A job through a real Celery worker on the GPU (`ATELIER_DEVICE=cuda`), and the worker's device on
the System page; skipped cleanly without a CUDA GPU (`bench/gpu.sh` runs it on one)."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from shared.devices import live_devices
from shared.services import Services
from tests.service.helpers import (TERMINAL, OPERATOR_PASSWORD, make_operator, metric, metrics_dir, submit, wait_for,
                                   wait_status)

pytestmark = [pytest.mark.cuda, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_a_job_runs_on_the_gpu_and_the_system_page_shows_the_device(
        make_redis, worker_settings, private_database, workers, client_for, images, tmp_path):
    local = replace(worker_settings, redis_url=make_redis().url(0), database_url=private_database, device="cuda")
    client, auth = client_for(local)
    metrics, env = metrics_dir(tmp_path)
    worker = workers(local, env=env)
    job_id = submit(client, auth, images, {"size": 128, "iterations": 20, "snapshot_every": 5}).get_json()["id"]
    done = wait_status(client, auth, job_id, TERMINAL, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert f"job {job_id}: succeeded in" in worker.output() and "on cuda" in worker.output()
    assert done["result"]["quality"] and len(done["snapshots"]) == 3
    for measure in ("seconds", "memory"):  # set against the cuda-bf16 model's prediction, memory too on a GPU
        assert metric(metrics, "atelier_job_prediction_ratio_count", model="cuda-bf16", measure=measure) == 1

    def paced() -> dict | None:  # the worker reports its pace (its run over the model's prediction) after the job
        (device,) = live_devices(Services(local).redis).values()
        return device if "pace" in device else None

    device = wait_for(paced, timeout=30, what="the worker's pace in its device report")
    props = torch.cuda.get_device_properties(0)
    pace = device.pop("pace")
    assert device == {"device": "cuda", "name": props.name, "memory_bytes": props.total_memory, "precision": "bf16"}
    assert pace > 0
    operator = make_operator(local)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/sign-in").get_data(as_text=True)).group(1)
    signed_in = client.post("/admin/sign-in", data={"name": operator, "password": OPERATOR_PASSWORD, "csrf_token": token})
    assert signed_in.status_code == 303
    html = wait_for(lambda: h if props.name in (h := client.get("/admin/system").get_data(as_text=True)) else None,
                    timeout=30, what="the GPU on the System page")
    assert f"{props.total_memory / 2**30:.1f} GiB · <span" in html and ">bf16</span>" in html
