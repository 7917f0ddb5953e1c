"""The database goes away, for real (tests/service/faults.py moves the SQLite database's directory
aside): readiness says so, the API answers 503 problem+json, and a worker keeps its running job,
retrying its writes until the database is back, losing nothing it reported as saved."""
from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select

from api.app import create_app
from shared.models import Job, LossPoint
from shared.services import Services
from tests.service import faults
from tests.service.conftest import new_key, submit, wait_for, wait_status
from shared.broker import GPU_QUEUE, RUN_JOB, create_celery

TERMINAL = {"succeeded", "failed", "canceled"}


def test_the_api_answers_503_while_the_database_is_down(private_database, settings, images):
    local = replace(settings, database_url=private_database)
    app = create_app(local)
    app.config["TESTING"] = True
    client, auth = app.test_client(), {"Authorization": f"Bearer {new_key(local)}"}
    job_id = submit(client, auth, images, {"size": 32, "iterations": 2}).get_json()["id"]
    assert client.get("/readyz").status_code == 200

    outage = faults.cut_database(private_database)
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "database" in ready.get_json()["detail"]
        for method, path in (("get", "/v1/jobs"), ("get", f"/v1/jobs/{job_id}"), ("post", f"/v1/jobs/{job_id}/cancel"),
                             ("get", f"/v1/jobs/{job_id}/result"), ("delete", f"/v1/jobs/{job_id}")):
            response = getattr(client, method)(path, headers=auth)
            assert response.status_code == 503, (method, path, response.status_code)
            assert response.mimetype == "application/problem+json"
            assert response.get_json()["status"] == 503 and response.headers["Retry-After"]
        response = submit(client, auth, images, {"size": 32, "iterations": 2})
        assert response.status_code == 503 and response.mimetype == "application/problem+json"
    finally:
        faults.restore_database(outage)

    assert client.get("/readyz").status_code == 200
    job = client.get(f"/v1/jobs/{job_id}", headers=auth)
    assert job.status_code == 200 and job.get_json()["status"] == "queued"  # nothing the outage touched
    assert submit(client, auth, images, {"size": 32, "iterations": 2}).status_code == 202
    app.extensions["atelier"].db.dispose()


@pytest.mark.slow
def test_a_worker_keeps_its_job_through_a_database_outage(private_database, make_redis, worker_settings,
                                                          workers, images):
    local = replace(worker_settings, database_url=private_database, redis_url=make_redis().url(0))
    app = create_app(local)
    app.config["TESTING"] = True
    client, auth = app.test_client(), {"Authorization": f"Bearer {new_key(local)}"}
    worker = workers(local)
    services = Services(local)
    job_id = submit(client, auth, images, {"size": 32, "iterations": 120, "snapshot_every": 0}).get_json()["id"]

    def saved() -> tuple[int, str] | None:
        with services.db.session() as session:
            job = session.get(Job, job_id)
            iteration = (job.progress or {}).get("iteration", 0)
            return (iteration, job.checkpoint_key) if iteration >= 5 and job.checkpoint_key else None
    before, _checkpoint = wait_for(saved, timeout=180, what="progress and a checkpoint to be saved")
    services.db.dispose()

    outage = faults.cut_database(private_database)
    try:
        def retries() -> int:
            return sum(1 for line in worker.output().splitlines()
                       if f"job {job_id}: " in line and ": database unavailable" in line)
        wait_for(lambda: retries() >= 3, timeout=120, what="the worker to retry its writes")
        assert "giving up" not in worker.output()
    finally:
        faults.restore_database(outage)

    done = wait_status(client, auth, job_id, TERMINAL, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1 and done["progress"]["resumed_from"] is None  # the same run carried on
    assert done["progress"]["iteration"] == 120
    assert "database reachable again" in worker.output() and "Traceback" not in worker.output()
    with services.db.session() as session:
        history = list(session.scalars(select(LossPoint.iteration).where(LossPoint.job_id == job_id)
                                       .order_by(LossPoint.id)))
    assert before in history and history == sorted(history)  # what it saved before the outage is still there
    assert history[-1] == 120
    services.db.dispose()


@pytest.mark.slow
def test_a_job_delivered_while_the_database_is_down_runs_once_it_is_back(private_database, make_redis, settings,
                                                                          worker_settings, workers, images):
    # submitted where no worker listens, then handed to a worker that cannot reach the database:
    # after its (here short) retries it puts the message back instead of dropping it
    local = replace(worker_settings, database_url=private_database, redis_url=make_redis().url(0),
                    database_retry_seconds=1.0)
    app = create_app(replace(settings, database_url=private_database))
    app.config["TESTING"] = True
    client, auth = app.test_client(), {"Authorization": f"Bearer {new_key(local)}"}
    celery = create_celery(local)
    worker = workers(local)
    warm_up = submit(client, auth, images, {"size": 32, "iterations": 1}).get_json()["id"]
    celery.send_task(RUN_JOB, args=[warm_up], queue=GPU_QUEUE)  # the worker has connected to the database
    assert wait_status(client, auth, warm_up, TERMINAL, timeout=120)["status"] == "succeeded"
    job_id = submit(client, auth, images, {"size": 32, "iterations": 3}).get_json()["id"]

    outage = faults.cut_database(private_database)
    try:
        celery.send_task(RUN_JOB, args=[job_id], queue=GPU_QUEUE)
        wait_for(lambda: worker.output().count(f"job {job_id}: database unavailable at claim; message requeued") >= 2,
                 timeout=120, what="the worker to put the message back, and get it again")
    finally:
        faults.restore_database(outage)

    done = wait_status(client, auth, job_id, TERMINAL, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1
    app.extensions["atelier"].db.dispose()
