"""Prometheus metrics, scraped from real servers: the API under gunicorn (two processes) with a
real worker writing to the same multiprocess directory, as under `atelier run`; and
`atelier worker`'s own metrics port. `/metrics` answers only an admin session or the token."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.stack import free_port, gunicorn_command
from shared import capacity
from shared.schemas import engine_params
from tests.service import faults
from tests.service.helpers import (OPERATOR_PASSWORD, ROOT, TERMINAL, bearer, make_settings, new_key, submit, wait_for,
                                   wait_status)

TOKEN = "metrics-token-for-tests"
pytestmark = pytest.mark.slow


def get(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
    except OSError:
        return 0, b"", {}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scrape: dict, name: str, **labels) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


def form(params: dict, images: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    fields = [("content", "c.png", images["content"], "image/png"), ("style", "s.png", images["style"], "image/png"),
              ("params", "params.json", json.dumps(params).encode(), "application/json")]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n" for name, filename, data, kind in fields)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_metrics_answer_only_an_admin_session_or_the_token(settings, auth, make_app, operator):
    client = make_app(replace(settings, metrics_token=TOKEN)).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, auth):  # an API key is not enough
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401 and response.mimetype == "application/problem+json"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.content_type.startswith("text/plain; version=0.0.4")
    assert "atelier_jobs{" in response.get_data(as_text=True)

    html = client.get("/admin/sign-in").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    assert client.post("/admin/sign-in", data={"name": operator, "password": OPERATOR_PASSWORD,
                                               "csrf_token": csrf}).status_code == 303
    assert client.get("/metrics").status_code == 200  # the operator's session, no token
    # without a configured token, no bearer opens it
    assert make_app(settings).test_client().get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_a_gunicorn_api_and_a_worker_report_into_one_scrape(make_redis, private_database, tmp_path, workers, images,
                                                            receiver):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    settings = replace(make_settings(private_database, make_redis().url(0), tmp_path / "storage"),
                       metrics_token=TOKEN, webhook_allow_networks="127.0.0.0/8", webhook_retry_schedule="1,1")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    workers(settings, ("-Q", "gpu,maintenance"), env=env)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "gunicorn.log", "wb") as log:
        api = subprocess.Popen(gunicorn_command(f"127.0.0.1:{port}", workers=2), cwd=ROOT,
                               env=os.environ | settings.to_env() | env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: get(f"{base}/readyz")[0] == 200, timeout=60, what="gunicorn to answer")
        auth = bearer(new_key(settings))
        body, kind = form({"size": 32, "iterations": 8, "snapshot_every": 4, "webhook_url": receiver.url()}, images)
        status, answer, _ = get(f"{base}/v1/jobs", auth | {"Content-Type": kind}, body)
        assert status == 202, answer
        job_id = json.loads(answer)["id"]
        polls = 0

        def finished():
            nonlocal polls
            polls += 1
            job = json.loads(get(f"{base}/v1/jobs/{job_id}", auth)[1])
            return job["status"] in TERMINAL and job
        done = wait_for(finished, timeout=120, interval=0.2, what="the job")
        assert done["status"] == "succeeded", done
        wait_for(lambda: receiver.requests(), timeout=60, what="the webhook")
        for _ in range(10):  # spread over both gunicorn processes; every one of them is counted
            assert get(f"{base}/v1/jobs/{job_id}", auth)[0] == 200
        assert get(f"{base}/v1/jobs/{uuid.uuid4()}", auth)[0] == 404

        assert get(f"{base}/metrics")[0] == 401
        status, text, headers = get(f"{base}/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        scrape = samples(text.decode())
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(30)

    # requests by route template and status, with latency histograms, summed over both processes
    assert value(scrape, "atelier_http_requests_total", route="/v1/jobs", method="POST", status="202") == 1
    assert value(scrape, "atelier_http_requests_total", route="/v1/jobs/<job_id>", method="GET",
                 status="200") == polls + 10
    assert value(scrape, "atelier_http_requests_total", route="/v1/jobs/<job_id>", method="GET", status="404") == 1
    assert value(scrape, "atelier_http_request_duration_seconds_count", route="/v1/jobs", method="POST") == 1
    assert value(scrape, "atelier_http_request_duration_seconds_bucket", route="/v1/jobs", method="POST",
                 le="+Inf") == 1
    # jobs by status and queue depth, read at scrape time
    assert value(scrape, "atelier_jobs", status="succeeded") == 1
    assert value(scrape, "atelier_jobs", status="queued") == value(scrape, "atelier_jobs", status="failed") == 0
    assert value(scrape, "atelier_queue_depth", queue="gpu") == 0
    assert value(scrape, "atelier_queue_depth", queue="maintenance") is not None
    # what the worker process wrote: run time, queue wait, iterations, device memory, webhooks
    assert value(scrape, "atelier_job_run_seconds_count", status="succeeded") == 1
    assert value(scrape, "atelier_job_queue_wait_seconds_count") == 1
    workers_seen = {dict(labels)["worker"] for name, labels in scrape if name == "atelier_engine_iterations_total"}
    assert len(workers_seen) == 1 and next(iter(workers_seen)).startswith("test-")
    name = next(iter(workers_seen))
    assert value(scrape, "atelier_engine_iterations_total", worker=name) == 8
    assert value(scrape, "atelier_worker_iterations_per_second", worker=name) == 0  # idle again
    assert value(scrape, "atelier_worker_device_memory_bytes", worker=name, device="cpu", kind="peak") > 2**20
    # the job's time over what the capacity model of the device and precision it ran in predicts;
    # a CPU's memory is left out (its peak is the worker process's, not the job's)
    run, model = done["run"], f"cpu-{done['run']['precision']}"
    work = capacity.workload(engine_params(done["params"]), (48, 36), [(32, 32)])
    predicted = capacity.predict(work, "cpu", run["precision"]).seconds
    assert value(scrape, "atelier_job_prediction_ratio_count", model=model, measure="seconds") == 1
    assert value(scrape, "atelier_job_prediction_ratio_sum", model=model, measure="seconds") == \
        pytest.approx(run["seconds"] / predicted, abs=0.006 / predicted)  # `run` rounds to 10 ms
    assert value(scrape, "atelier_job_prediction_ratio_count", model=model, measure="memory") is None
    assert value(scrape, "atelier_webhook_deliveries_total", outcome="delivered") == 1


def test_atelier_worker_runs_a_cpu_worker_serves_its_metrics_and_restarts_it(make_redis, private_database, tmp_path,
                                                                            images, client_for):
    settings = replace(make_settings(private_database, make_redis().url(0), tmp_path / "storage"),
                       metrics_token=TOKEN, worker_metrics_port=free_port())
    log_path = tmp_path / "worker.log"
    env = os.environ | settings.to_env() | {"OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log_path, "wb") as log:
        supervisor = subprocess.Popen([sys.executable, "-m", "shared.cli", "worker", "--device", "cpu"], cwd=tmp_path,
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
    metrics_url = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    try:
        wait_for(lambda: b" ready." in log_path.read_bytes(), timeout=90, what="the worker")
        assert "atelier worker: 1 worker(s): cpu; queue gpu" in log_path.read_text()
        client, auth = client_for(settings)
        job = submit(client, auth, images, {"size": 32, "iterations": 5}).get_json()
        assert wait_status(client, auth, job["id"], TERMINAL)["status"] == "succeeded"

        assert get(metrics_url)[0] == 401
        status, text, _ = get(metrics_url, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        scrape = samples(text.decode())
        node = f"cpu@{socket.gethostname()}"
        assert value(scrape, "atelier_engine_iterations_total", worker=node) == 5
        assert value(scrape, "atelier_job_run_seconds_count", status="succeeded") == 1

        child = int(re.search(r"started cpu \(pid (\d+)\)", log_path.read_text()).group(1))
        faults.kill_process(child, group=True)  # the worker and its pool process die
        wait_for(lambda: re.search(r"started cpu \(pid (?!%d\))\d+\)" % child, log_path.read_text()), timeout=30,
                 what="the worker to be restarted")
        assert f"cpu (pid {child}) exited with code -9; restarting" in log_path.read_text()
        wait_for(lambda: log_path.read_text().count(" ready.") == 2, timeout=90, what="the new worker")
        again = submit(client, auth, images, {"size": 32, "iterations": 3}).get_json()
        assert wait_status(client, auth, again["id"], TERMINAL)["status"] == "succeeded"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(90) == 0
    pids = [int(p) for p in re.findall(r"started cpu \(pid (\d+)\)", log_path.read_text())]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], pid
    assert get(metrics_url)[0] == 0  # the metrics server went with it


def test_one_worker_process_per_visible_gpu_each_pinned_to_its_device():
    from shared.supervisor import Child
    from worker.fleet import NoDevice, visible_gpus, worker_children

    none = lambda: 0  # noqa: E731 (the CUDA device count of a machine without GPUs)
    assert visible_gpus("auto", {}, none) == [] and visible_gpus("auto", {}, lambda: 2) == ["0", "1"]
    assert visible_gpus("auto", {"CUDA_VISIBLE_DEVICES": "2, 5"}, none) == ["2", "5"]
    assert visible_gpus("auto", {"CUDA_VISIBLE_DEVICES": "GPU-3f2a,GPU-77b1"}, none) == ["GPU-3f2a", "GPU-77b1"]
    assert visible_gpus("auto", {"CUDA_VISIBLE_DEVICES": ""}, lambda: 4) == []
    assert visible_gpus("auto", {"CUDA_VISIBLE_DEVICES": "-1"}, lambda: 4) == []
    assert visible_gpus("cpu", {"CUDA_VISIBLE_DEVICES": "0"}, lambda: 4) == []
    assert visible_gpus("cuda:3", {}, lambda: 4) == ["3"]
    with pytest.raises(NoDevice):
        visible_gpus("cuda", {}, none)

    children = worker_children(["2", "5", "7"], python="/py")
    assert [c.name for c in children] == ["gpu0", "gpu1", "gpu2"]
    assert [c.env for c in children] == [{"CUDA_VISIBLE_DEVICES": gpu, "ATELIER_DEVICE": "cuda"}
                                         for gpu in ("2", "5", "7")]
    for index, child in enumerate(children):
        assert child.argv[:6] == ["/py", "-m", "celery", "-A", "worker.celery_app", "worker"]
        assert child.argv[child.argv.index("-Q") + 1] == "gpu"
        assert child.argv[child.argv.index("--concurrency") + 1] == "1"
        assert child.argv[child.argv.index("-n") + 1] == f"gpu{index}@%h"  # a node name of its own
    assert worker_children([], python="/py") == [Child("cpu", [*children[0].argv[:-2], "-n", "cpu@%h"],
                                                       env={"ATELIER_DEVICE": "cpu"})]
