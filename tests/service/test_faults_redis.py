"""Redis faults, injected for real (tests/service/faults.py): the broker and event bus is down
when a job is submitted, or goes away and comes back (empty) while a job runs."""
from __future__ import annotations

from dataclasses import replace

import pytest

from api.app import create_app
from shared.migrate import upgrade
from shared.models import Job
from shared.services import Services
from tests.service import faults
from tests.service.conftest import new_key, submit, wait_for, wait_status
from tests.service.test_worker import read_events

TERMINAL = {"succeeded", "failed", "canceled"}
pytestmark = pytest.mark.slow


def test_a_job_submitted_while_redis_is_down_runs_once_redis_is_back(make_redis, worker_settings, workers,
                                                                      images, tmp_path):
    # a database of its own: its beat sweeps every second, and must see no other test's jobs
    database_url = f"sqlite:///{tmp_path / 'db' / 'atelier.db'}"
    upgrade(database_url)
    server = make_redis()
    local = replace(worker_settings, redis_url=server.url(0), sweep_seconds=1.0, database_url=database_url)
    app = create_app(local)
    client, auth = app.test_client(), {"Authorization": f"Bearer {new_key(local)}"}
    # as in production: a GPU worker and the maintenance worker with beat running the sweep
    worker = workers(local, ("-Q", "gpu,maintenance", "--beat", "--schedule", str(tmp_path / "beat-schedule")))

    faults.stop_redis(server)
    response = submit(client, auth, images, {"size": 32, "iterations": 4, "snapshot_every": 2})
    assert response.status_code == 202, response.get_json()  # accepted: the job is safe in SQL
    job_id = response.get_json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()["status"] == "queued"
    with Services(local).db.session() as session:
        assert session.get(Job, job_id).enqueued_at is None  # the broker never got it
    assert client.get("/readyz").status_code == 503

    faults.start_redis(server)  # same port, empty: the worker and beat reconnect on their own
    done = wait_status(client, auth, job_id, TERMINAL, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1 and [s["iteration"] for s in done["snapshots"]] == [2]
    assert f"job {job_id}: claimed by" in worker.output()
    assert client.get("/readyz").status_code == 200


def test_a_job_survives_a_redis_restart_and_its_events_still_go_out(make_redis, worker_settings, workers,
                                                                   images):
    server = make_redis()
    local = replace(worker_settings, redis_url=server.url(0))
    app = create_app(local)
    app.config["TESTING"] = True
    client, auth = app.test_client(), {"Authorization": f"Bearer {new_key(local)}"}
    worker = workers(local)
    job_id = submit(client, auth, images, {"size": 32, "iterations": 200, "snapshot_every": 50}).get_json()["id"]
    wait_for(lambda: (client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()["progress"] or {}).get("iteration", 0) >= 3,
             timeout=180, what="the job to run")

    faults.stop_redis(server)
    wait_for(lambda: f"could not publish progress event for job {job_id}" in worker.output(), timeout=60,
             what="the worker to notice Redis is gone")
    faults.start_redis(server)

    # a live viewer connecting now gets the job's events from here to its end, through the restarted Redis
    stream = client.get(f"/v1/jobs/{job_id}/events", headers=auth, buffered=False)
    assert stream.status_code == 200
    events = read_events(stream, until=300)
    kinds = [kind for kind, _ in events]
    assert events[-1][0] == "status" and events[-1][1]["status"] == "succeeded", events[-1]
    assert events[0][1]["status"] == "running"  # the stream began mid-job: what follows came over pub/sub
    assert "progress" in kinds
    done = wait_status(client, auth, job_id, TERMINAL, timeout=30)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert done["progress"]["iteration"] == 200 and done["progress"]["resumed_from"] is None  # never restarted
    assert [s["iteration"] for s in done["snapshots"]] == [50, 100, 150]
    assert worker.output().count(f"job {job_id}: claimed by") == 1
