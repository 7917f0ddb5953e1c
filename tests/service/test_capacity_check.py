"""Capacity at submission (shared.capacity): a job that fits on no live worker's device is
refused with a 422 naming the parameter; one that fits is told its predicted run time and memory
(its ETA while queued), at the pace that worker measured on its own jobs; with no live worker
nothing is refused. Real workers report their device and heartbeat into a real Redis."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest

from shared import capacity
from shared.broker import create_celery
from shared.devices import ALIVE_SECONDS, FORGET_SECONDS, SEEN_KEY, live_devices, read_devices, report_device
from shared.schemas import engine_params
from shared.services import Services
from tests.service import faults
from tests.service.helpers import TERMINAL, assert_problem, submit, wait_for, wait_status
from worker.sweep import sweep

pytestmark = pytest.mark.slow
HUGE = {"size": 8192, "snapshot_every": 0}  # 8192 x 6144 px: far more than this machine's memory on the CPU
SMALL = {"size": 64, "iterations": 2, "snapshot_every": 0}


def live(settings) -> dict[str, dict]:
    services = Services(settings)
    try:
        return live_devices(services.redis)
    finally:
        services.redis.close()


def test_too_big_for_every_live_device_is_refused_and_a_job_that_fits_gets_its_prediction(
        make_redis, worker_settings, private_database, workers, client_for, images):
    local = replace(worker_settings, redis_url=make_redis().url(0), database_url=private_database, max_size=8192)
    client, auth = client_for(local)
    worker = workers(local)
    (device,) = wait_for(lambda: live(local), timeout=30, what="the worker to report its device").values()
    assert device["device"] == "cpu" and device["memory_bytes"] > 2**30  # the machine's memory
    assert device["precision"] in ("bf16", "fp32")  # this CPU's own (tests/engine: resolve_precision)
    assert "warmed up on cpu in" in worker.output()  # a tiny job of its own, before it reported its device

    body = assert_problem(submit(client, auth, images, HUGE), 422, "params.size")
    assert "needs ~" in body["detail"] and "GiB of device memory" in body["detail"]
    assert f"the largest worker device has {device['memory_bytes'] / 2**30:.1f} GiB" in body["detail"]
    assert client.get("/v1/jobs", headers=auth).get_json()["data"] == []  # nothing was made

    job = submit(client, auth, images, SMALL).get_json()
    work = capacity.workload(engine_params(job["params"]), (48, 36), [(32, 32)])  # the `images` fixture's sizes
    assert job["prediction"] == capacity.predict(work, "cpu", device["precision"]).to_dict()
    assert job["prediction"]["measured"] is True and job["prediction"]["seconds"] > 0
    done = wait_status(client, auth, job["id"], TERMINAL, timeout=120)
    assert done["status"] == "succeeded" and done["prediction"] == job["prediction"] and job["run"] is None
    # how it ran, to set against the prediction: on the worker's own device, in the precision it
    # reported (which worker is for operators only: the admin job page)
    assert done["run"] | {"seconds": 0, "peak_memory_mb": 0} == {
        "device": "cpu", "device_name": device["name"], "precision": device["precision"],
        "seconds": 0, "peak_memory_mb": 0, "batch_size": 1}
    assert 0 < done["run"]["seconds"] and done["run"]["peak_memory_mb"] > 100  # a process holding torch and VGG
    assert "pace" not in device  # before its first job, the model's own time
    # its pace, its lone jobs' run time over the model's (this one's alone), is in its report since;
    # new jobs are predicted at it
    base = capacity.predict(work, "cpu", device["precision"]).seconds
    pace = wait_for(lambda: next(iter(live(local).values())).get("pace"), timeout=10, what="the worker's pace")
    assert pace == pytest.approx(done["run"]["seconds"] / base, abs=0.006 / base + 0.001)  # `run` rounds to 10 ms
    again = submit(client, auth, images, SMALL).get_json()
    assert again["prediction"] == capacity.predict(work, "cpu", device["precision"], pace).to_dict()
    assert again["prediction"]["seconds"] == pytest.approx(base * pace, abs=0.05)

    faults.kill_worker(worker)  # a crashed worker drops out once its heartbeats stop
    wait_for(lambda: not live(local), timeout=ALIVE_SECONDS + 10, what="the dead worker to drop out")
    queued = submit(client, auth, images, HUGE)
    assert queued.status_code == 202 and queued.get_json()["prediction"] is None  # no live worker: not refused


def test_a_live_worker_stays_live_and_leaves_at_once_when_it_stops(make_redis, worker_settings, private_database,
                                                                   workers):
    local = replace(worker_settings, redis_url=make_redis().url(0), database_url=private_database)
    worker = workers(local)
    wait_for(lambda: live(local), timeout=30, what="the worker to report its device")
    time.sleep(ALIVE_SECONDS + 2)  # past its first mark: its heartbeats keep it alive
    assert live(local)
    worker.stop()  # SIGTERM: a warm shutdown marks it gone, and takes its report with it
    assert live(local) == {}
    services = Services(local)
    assert read_devices(services.redis) == {} and services.redis.zcard(SEEN_KEY) == 0
    services.redis.close()


def test_the_sweep_forgets_the_report_of_a_worker_not_alive_for_a_day(make_redis, worker_settings,
                                                                      private_database):
    """A worker that died (killed, its machine gone) leaves its report: the sweep forgets it once
    the worker was last alive a day ago, where before every submission read every node ever seen.
    A report from before these times were kept is given the present one."""
    local = replace(worker_settings, redis_url=make_redis().url(0), database_url=private_database)
    services = Services(local)
    report = {"device": "cpu", "name": "CPU", "memory_bytes": 2**40, "precision": "bf16"}
    for node in ("dead@gone", "recent@host", "older@host"):
        report_device(services.redis, node, report)
    services.redis.zadd(SEEN_KEY, {"dead@gone": time.time() - FORGET_SECONDS - 60})  # its last heartbeat
    services.redis.zrem(SEEN_KEY, "older@host")
    assert sweep(services, create_celery(local)).forgotten == ["dead@gone"]
    assert set(read_devices(services.redis)) == {"recent@host", "older@host"}
    assert services.redis.zscore(SEEN_KEY, "older@host") == pytest.approx(time.time(), abs=60)
    assert sweep(services, create_celery(local)).forgotten == []
    services.redis.close()


@pytest.mark.parametrize("report, model", [
    ({"device": "cpu", "name": "CPU (64 cores)", "memory_bytes": 2**40, "precision": "bf16"}, "cpu-bf16"),
    ({"device": "cpu", "name": "CPU (64 cores)", "memory_bytes": 2**40, "precision": "fp32"}, "cpu-fp32"),
    ({"device": "cpu", "name": "CPU (64 cores)", "memory_bytes": 2**40}, "cpu-fp32"),  # a worker from before
    ({"device": "cuda:1", "name": "NVIDIA H100", "memory_bytes": 80 * 2**30}, "cuda-bf16"),  # the precision field
])
def test_the_prediction_is_the_model_of_the_reported_devices_precision(make_redis, worker_settings, private_database,
                                                                       client_for, images, report, model):
    local = replace(worker_settings, redis_url=make_redis().url(0), database_url=private_database)
    services = Services(local)
    report_device(services.redis, "other@host", report)
    client, auth = client_for(local)
    job = submit(client, auth, images, SMALL).get_json()
    work = capacity.workload(engine_params(job["params"]), (48, 36), [(32, 32)])
    expected = capacity.models()[model]
    assert job["prediction"] == {"device": capacity.device_kind(report["device"]), "seconds": round(expected.seconds(work), 1),
                                 "memory_mb": round(expected.memory_mb(work)), "measured": True}
    services.redis.close()


def test_the_eta_is_the_fastest_live_devices(make_redis, worker_settings, private_database, client_for, images):
    local = replace(worker_settings, redis_url=make_redis().url(0), database_url=private_database)
    services = Services(local)
    for node, precision in (("slow@host", "fp32"), ("fast@host", "bf16")):
        report_device(services.redis, node, {"device": "cpu", "name": "CPU", "memory_bytes": 2**40,
                                             "precision": precision})
    client, auth = client_for(local)
    job = submit(client, auth, images, SMALL).get_json()
    work = capacity.workload(engine_params(job["params"]), (48, 36), [(32, 32)])
    assert job["prediction"] == capacity.predict(work, "cpu", "bf16").to_dict()
    assert capacity.predict(work, "cpu", "bf16").seconds < capacity.predict(work, "cpu", "fp32").seconds
    services.redis.close()
