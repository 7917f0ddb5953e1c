"""Batching (worker.engine.loop, JobRun._companions): a worker that takes a job claims the queued
jobs of its shape and runs them with it as one batch, each with its own optimiser and outcome.
Real worker processes, a real Redis and database; the batch is seen in the worker's log."""
from __future__ import annotations

import io
import re
from dataclasses import replace

import pytest
import torch
from PIL import Image

from shared.broker import create_celery
from tests.service import faults
from tests.service.helpers import TERMINAL, make_settings, metric, metrics_dir, submit, wait_for, wait_status
from worker.engine.images import to_tensor

pytestmark = pytest.mark.slow
SHAPE = {"size": 48, "iterations": 6, "snapshot_every": 0}


@pytest.fixture(params=["sqlite", "postgresql"])
def own_database(request) -> str:
    """A database of the test's own (no other test's queued jobs to batch with): SQLite, and
    PostgreSQL when ATELIER_TEST_POSTGRES_URL is set."""
    return request.getfixturevalue("private_database" if request.param == "sqlite" else "postgres_url")


def private(make_redis, database_url, storage, client_for, **overrides):
    local = make_settings(database_url, make_redis().url(0), storage, **overrides)
    return local, *client_for(local)


def batches(log: str) -> list[set[str]]:
    """The batches a worker's log reports: each the set of its job ids."""
    return [{lead, *others.split(", ")}
            for lead, _, others in re.findall(r"job (\S+): running as a batch of (\d+) with ([^\n]+)", log)]


def result(client, auth, job_id: str) -> torch.Tensor:
    response = client.get(f"/v1/jobs/{job_id}/result", headers=auth)
    assert response.status_code == 200
    return to_tensor(Image.open(io.BytesIO(response.data)).convert("RGB"))


def test_queued_jobs_of_one_shape_run_as_one_batch_and_end_as_they_would_alone(
        make_redis, own_database, tmp_path, workers, client_for, images):
    local, client, auth = private(make_redis, own_database, tmp_path / "storage", client_for, max_batch=3)
    variants = [{"style_weight": 5.0}, {"style_weight": 20.0}, {"init": "noise", "seed": 7}]
    together = [submit(client, auth, images, SHAPE | v).get_json()["id"] for v in variants]
    other = submit(client, auth, images, SHAPE | {"size": 32}).get_json()["id"]  # another shape
    metrics, env = metrics_dir(tmp_path)
    worker = workers(local, env=env)  # all four are queued when it takes the first
    for job_id in [*together, other]:
        done = wait_status(client, auth, job_id, TERMINAL, timeout=180)
        assert done["status"] == "succeeded", done["error"]
        assert done["progress"]["iteration"] == 6 and done["attempts"] == 1
        assert done["run"]["batch_size"] == (1 if job_id == other else 3)  # the time and memory it shared
    assert batches(worker.output()) == [set(together)]  # one batch of three; the other shape ran alone
    # only the lone job is set against the capacity model's prediction for one job
    assert metric(metrics, "atelier_job_prediction_ratio_count", model=f"cpu-{done['run']['precision']}",
                  measure="seconds") == 1
    assert worker.output().count(f"job {other}: claimed by") == 1
    for job_id in together[1:]:  # each companion's own message found it taken or ended, and was dropped
        wait_for(lambda: f"job {job_id}: not claimed (status" in worker.output(), timeout=60,
                 what=f"the message of {job_id} to be dropped")

    worker.stop()
    alone_worker = workers(replace(local, max_batch=1))
    alone = [submit(client, auth, images, SHAPE | v).get_json()["id"] for v in variants]
    for batched, single in zip(together, alone):
        assert wait_status(client, auth, single, TERMINAL, timeout=180)["status"] == "succeeded"
        difference = float((result(client, auth, batched) - result(client, auth, single)).abs().mean())
        assert difference < 2 / 255, difference  # the same image, up to float rounding (and 8-bit output)
    assert batches(alone_worker.output()) == []
    first, third = result(client, auth, together[0]), result(client, auth, together[2])
    assert float((first - third).abs().mean()) > 10 / 255  # and different jobs, not one result copied


def test_a_job_canceled_mid_batch_ends_alone_and_the_others_finish(
        make_redis, own_database, tmp_path, workers, client_for, images):
    local, client, auth = private(make_redis, own_database, tmp_path / "storage", client_for, max_batch=3)
    long = SHAPE | {"iterations": 200}
    ids = [submit(client, auth, images, long | {"seed": seed, "init": "noise"}).get_json()["id"] for seed in (1, 2, 3)]
    worker = workers(local)
    wait_for(lambda: batches(worker.output()) == [set(ids)], timeout=120, what="the batch to start")

    def running_past(job_id: str, iteration: int):
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
        return job["status"] == "running" and (job["progress"] or {}).get("iteration", 0) >= iteration

    wait_for(lambda: running_past(ids[1], 3), timeout=120, what="the batch to run")
    assert client.post(f"/v1/jobs/{ids[1]}/cancel", headers=auth).status_code == 202
    canceled = wait_status(client, auth, ids[1], TERMINAL, timeout=120)
    assert canceled["status"] == "canceled" and canceled["progress"]["iteration"] < 200
    # ended as it left the batch, not when the batch did
    assert [client.get(f"/v1/jobs/{i}", headers=auth).get_json()["status"] for i in (ids[0], ids[2])] == ["running"] * 2
    for job_id in (ids[0], ids[2]):  # in step with it until then, they go on to the end
        done = wait_status(client, auth, job_id, TERMINAL, timeout=300)
        assert done["status"] == "succeeded" and done["progress"]["iteration"] == 200, done["error"]


def test_a_batch_that_runs_out_of_memory_goes_back_and_its_jobs_run_alone(
        make_redis, own_database, tmp_path, workers, client_for, images):
    """The worker's job process gets a memory cap (faults.limit_memory) that holds one 256 px job
    but not two at once: the batch runs out of memory, its jobs go back to the queue (no attempt
    counted), the worker halves its batch size, and claims each job alone. (How those solo runs
    end is not asserted: on the CPU, once one of oneDNN's allocations failed, the process cannot
    create convolutions of new sizes, even with memory free again; see README, GPU workers.)"""
    local, client, auth = private(make_redis, own_database, tmp_path / "storage", client_for, max_batch=2,
                                  max_size=256)
    worker = workers(local)
    warm = submit(client, auth, images, SHAPE | {"size": 32}).get_json()["id"]
    assert wait_status(client, auth, warm, TERMINAL, timeout=120)["status"] == "succeeded"
    control = create_celery(local).control
    (node,) = control.inspect(timeout=5).active_queues()
    assert control.cancel_consumer("gpu", destination=[node], reply=True, timeout=5)  # hold the queue
    ids = [submit(client, auth, images, {"size": 256, "iterations": 3, "snapshot_every": 0, "seed": seed,
                                         "init": "noise"}).get_json()["id"] for seed in (1, 2)]
    # bisected with RLIMIT_DATA over a warm engine process (engine alone, 2026-11-26): one 256 px
    # job runs within 200 MB more than it holds, two at once need 360 MB
    faults.limit_memory(worker, headroom=230 * 2**20)
    assert control.add_consumer("gpu", destination=[node], reply=True, timeout=5)
    for job_id in ids:
        assert wait_status(client, auth, job_id, TERMINAL, timeout=180)["attempts"] == 1  # the batch's was refunded
    log = worker.output()
    assert batches(log) == [set(ids)]  # one batch, then none
    assert "out of memory in a batch of 2; this worker now batches at most 1" in log
    for job_id in ids:
        assert f"job {job_id}: handed back (out of memory in a batch of 2); re-queued" in log
        assert log.count(f"job {job_id}: claimed by") == 2  # in the batch, then alone
