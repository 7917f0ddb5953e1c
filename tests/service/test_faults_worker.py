"""Worker faults, injected for real (tests/service/faults.py): a worker SIGKILLed again and again,
a worker SIGTERMed mid-job, a job that outlives the broker's visibility timeout, a device that is
missing, a job that runs out of memory."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from shared.broker import create_celery
from shared.models import Job
from shared.services import Services
from tests.service import faults
from tests.service.helpers import TERMINAL, metric, metrics_dir, read_events, submit, wait_for, wait_status
from worker.sweep import sweep

pytestmark = pytest.mark.slow


def private(client_for, redis, worker_settings, database_url, **overrides):
    """Settings on a Redis and a database of this test's own (no other test's worker can take its
    jobs, and its sweeps see only its jobs), with `client_for`'s client and auth on them."""
    local = replace(worker_settings, redis_url=redis.url(0), database_url=database_url, **overrides)
    return local, *client_for(local)


def running_at(client, auth, job_id: str, iteration: int) -> dict:
    def check():
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
        assert job["status"] in ("queued", "running"), job
        return job if job["status"] == "running" and (job["progress"] or {}).get("iteration", 0) >= iteration else None
    return wait_for(check, timeout=180, what=f"job {job_id} to run past iteration {iteration}")


def checkpointed(services: Services, job_id: str) -> bool:
    with services.db.session() as session:
        return session.get(Job, job_id).checkpoint_key is not None


def test_a_job_killed_on_every_attempt_fails_with_a_reason_instead_of_looping(make_redis, worker_settings,
                                                                              private_database,
                                                                              workers, client_for, images):
    local, client, auth = private(client_for, make_redis(), worker_settings, private_database, max_attempts=2)
    services, celery = Services(local), create_celery(local)
    job_id = submit(client, auth, images, {"size": 32, "iterations": 1000, "snapshot_every": 0}).get_json()["id"]
    for attempt in (1, 2):
        worker = workers(local)
        if attempt == 2:  # the dead worker's lease expires; the sweep sends the job again
            wait_for(lambda: job_id in sweep(services, celery).resent, timeout=120, interval=0.5,
                     what="the sweep to re-send the job")
        wait_for(lambda: f"job {job_id}: claimed by" in worker.output(), timeout=120, what="the claim")
        job = running_at(client, auth, job_id, 3)
        assert job["attempts"] == attempt
        if attempt == 1:
            wait_for(lambda: checkpointed(services, job_id), timeout=120, what="a checkpoint")
        if attempt == 2:  # resumed from the first attempt's checkpoint, not from iteration 0
            wait_for(lambda: f"job {job_id}: resuming from iteration" in worker.output(), timeout=120,
                     what="the resume to be logged")
            resumed = wait_for(lambda: (p := client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()["progress"])
                               and p["resumed_from"] and p, timeout=120, what="progress of the resumed run")
            assert resumed["resumed_from"] >= 1 and resumed["iteration"] > resumed["resumed_from"]
        faults.kill_worker(worker)

    report = wait_for(lambda: (r := sweep(services, celery)).failed and r, timeout=60, interval=0.5,
                      what="the sweep to fail the job once its last lease expired")
    assert report.failed == [job_id] and job_id not in report.resent
    done = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
    assert done["status"] == "failed" and done["attempts"] == 2
    assert done["error"]["code"] == "attempts_exhausted" and "2 attempts" in done["error"]["message"]
    assert done["progress"]["iteration"] >= resumed["iteration"]  # what the last attempt reported stays
    later = sweep(services, celery)
    assert job_id not in later.resent + later.failed  # the end, not a loop
    with services.db.session() as session:
        assert session.get(Job, job_id).lease_owner is None


@pytest.mark.parametrize("whole_group", [False, True], ids=["main-process", "process-group"])
def test_a_worker_stopped_with_sigterm_hands_its_job_back_to_another(make_redis, worker_settings, private_database,
                                                                    workers, client_for, images, whole_group, tmp_path):
    local, client, auth = private(client_for, make_redis(), worker_settings, private_database)
    metrics, env = metrics_dir(tmp_path)
    first, second = workers(local, env=env), workers(local, env=env)
    job_id = submit(client, auth, images, {"size": 32, "iterations": 400, "snapshot_every": 0}).get_json()["id"]
    running_at(client, auth, job_id, 5)
    holder, other = (first, second) if f"job {job_id}: claimed by" in first.output() else (second, first)
    assert f"job {job_id}: claimed by" in holder.output()

    faults.terminate_worker(holder, whole_group)
    assert faults.wait_exited(holder) == 0  # it does not wait for the job to finish: it hands it back
    assert f"job {job_id}: handed back at iteration" in holder.output()
    assert f"job {job_id}: succeeded" not in holder.output()

    done = wait_status(client, auth, job_id, TERMINAL, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert f"job {job_id}: claimed by" in other.output()
    assert done["progress"]["resumed_from"] and done["progress"]["resumed_from"] >= 5  # from the hand-back checkpoint
    assert done["progress"]["iteration"] == 400
    assert done["attempts"] == 1  # a graceful hand-back is not a failed attempt
    # a resumed run did part of the work: it is not set against the whole job's predicted time
    assert metric(metrics, "atelier_job_run_seconds_count", status="succeeded") == 1
    assert metric(metrics, "atelier_job_prediction_ratio_count", model=f"cpu-{done['run']['precision']}",
                  measure="seconds") is None


def test_a_job_longer_than_the_visibility_timeout_runs_once(make_redis, worker_settings, private_database, workers,
                                                            client_for, images):
    # the broker re-delivers an unacknowledged message after 1 s: the running job's message comes
    # back to the idle worker while the first still runs it, and the claim turns it away. Kombu
    # looks for such messages when a worker starts and then every ~100 s: the second worker
    # starts once the job runs, so its first look finds the message
    local, client, auth = private(client_for, make_redis(), worker_settings, private_database, visibility_timeout=1)
    first = workers(local)
    job_id = submit(client, auth, images, {"size": 32, "iterations": 1000, "snapshot_every": 0}).get_json()["id"]
    running_at(client, auth, job_id, 1)
    second = workers(local)
    wait_for(lambda: f"job {job_id}: not claimed (status running)" in first.output() + second.output(),
             timeout=180, interval=0.5, what="the broker to re-deliver the running job's message")
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
    assert job["status"] == "running" and job["attempts"] == 1
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 202  # enough: end it now
    done = wait_status(client, auth, job_id, TERMINAL, timeout=120)
    assert done["status"] == "canceled" and done["attempts"] == 1
    assert (first.output() + second.output()).count(f"job {job_id}: claimed by") == 1


def test_a_worker_whose_device_is_missing_hands_the_job_to_another(make_redis, worker_settings, private_database,
                                                                   workers, images, client_for):
    """A worker configured for a GPU this machine does not have (`cuda:7`) claims a job; the engine
    raises DeviceError. Before the fix the job failed `engine_error` on that worker (this test
    failed so); now the job goes back to the queue with its claim refunded, that worker stops
    taking jobs, and a healthy worker runs it."""
    local, client, auth = private(client_for, make_redis(), worker_settings, private_database)
    broken = workers(replace(local, device="cuda:7"))
    job_id = submit(client, auth, images, {"size": 32, "iterations": 2, "snapshot_every": 0}).get_json()["id"]
    wait_for(lambda: f"job {job_id}: handed to another worker (device unavailable" in broken.output(), timeout=120,
             what="the broken worker to hand the job back")
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
    assert job["status"] == "queued" and job["attempts"] == 0 and job["error"] is None, job
    queues = create_celery(local).control.inspect(timeout=2).active_queues()
    assert list(queues.values()) == [[]], queues  # the broken worker is online but consumes nothing

    healthy = workers(local)
    done = wait_status(client, auth, job_id, TERMINAL, timeout=120)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done["error"]
    assert f"job {job_id}: claimed by" in healthy.output()
    assert broken.output().count(f"job {job_id}: claimed by") == 1


def test_a_job_that_runs_out_of_memory_fails_on_its_own_and_the_worker_runs_the_next(
        make_redis, worker_settings, private_database, workers, client_for, images, receiver):
    """The worker's job process gets a memory cap just above what it holds after a first job (the
    network loaded): a 256 px job cannot get its activations there and fails `out_of_memory`, with
    a message that says what it asked for and what to try, in GET, the status event and the
    webhook; the same worker, under the same cap, then runs a small job to success."""
    local, client, auth = private(client_for, make_redis(), worker_settings, private_database, max_size=256,
                                  webhook_allow_networks="127.0.0.0/8")
    worker = workers(local, ("-Q", "gpu,maintenance"))
    small = {"size": 32, "iterations": 2, "snapshot_every": 0}
    first = submit(client, auth, images, small).get_json()["id"]
    assert wait_status(client, auth, first, TERMINAL, timeout=180)["status"] == "succeeded"

    faults.limit_memory(worker, headroom=64 * 2**20)
    big = submit(client, auth, images, {"size": 256, "iterations": 3, "snapshot_every": 0,
                                        "webhook_url": receiver.url()}).get_json()["id"]
    failed = wait_status(client, auth, big, TERMINAL, timeout=180)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "out_of_memory"
    message = failed["error"]["message"]
    assert "ran out of memory" in message and "size 256 px" in message and "3 iterations" in message
    assert "Try a smaller size" in message
    delivered = wait_for(lambda: receiver.requests(), timeout=60, what="the job.failed webhook")
    payload = json.loads(delivered[0].body)
    assert payload["type"] == "job.failed" and payload["data"]["error"] == failed["error"]
    stream = client.get(f"/v1/jobs/{big}/events", headers=auth, buffered=False)
    assert read_events(stream)[-1] == ("status", failed)

    after = submit(client, auth, images, small).get_json()["id"]
    done = wait_status(client, auth, after, TERMINAL, timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert worker.process.poll() is None and worker.output().count("claimed by") == 3  # one worker ran all three
    assert f"job {big}: out of memory on cpu" in worker.output()
