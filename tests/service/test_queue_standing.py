"""Where a queued job stands (`queue` on the job and in lists, `queue` events, the admin job
page): the jobs ahead of it and its predicted start and end, from the running job's own ETA and
the predictions of the jobs ahead, against a real worker and Redis; without a worker, no start to predict; and
the streams' `Board`, one read of the queue for them all, agreeing with a poll."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, select, update
from sqlalchemy.orm import selectinload

from api.queue_standing import Board
from shared import events, lifecycle
from shared.devices import report_device, working_devices
from shared.models import Job
from shared.schemas import QueueOut, job_out
from shared.services import Services
from tests.service.helpers import (OPERATOR_PASSWORD, TERMINAL, make_operator, stream_events, submit, wait_for,
                                   wait_status)

TINY = {"size": 32, "iterations": 2, "snapshot_every": 0}
LONG = {"size": 128, "scales": 1, "iterations": 1000, "snapshot_every": 0}  # canceled long before it ends


def get(client, auth, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()


def test_without_a_live_worker_a_queued_job_knows_its_place_but_not_its_start(settings, make_redis,
                                                                               own_database, client_for, images):
    client, auth = client_for(replace(settings, redis_url=make_redis().url(0), database_url=own_database,
                                      metrics_token="metrics"))
    first, second = (submit(client, auth, images, TINY).get_json() for _ in range(2))
    assert first["prediction"] is None  # no worker was live to predict for
    scrape = client.get("/metrics", headers={"Authorization": "Bearer metrics"}).get_data(as_text=True)
    assert 'atelier_jobs{status="queued"} 2.0' in scrape  # and neither the queue's work nor its wait: unknown
    assert "atelier_queue_work_seconds" not in scrape and "atelier_queue_wait_seconds" not in scrape
    assert first["queue"] == {"position": 0, "workers": 0, "starts_in_seconds": None, "eta_seconds": None}
    assert get(client, auth, second["id"])["queue"]["position"] == 1
    listed = client.get("/v1/jobs", headers=auth).get_json()["data"]  # newest first
    assert [j["queue"] for j in listed] == [get(client, auth, second["id"])["queue"], first["queue"]]
    client.post(f"/v1/jobs/{first['id']}/cancel", headers=auth)
    assert get(client, auth, second["id"])["queue"]["position"] == 0  # a canceled job is no longer ahead
    assert get(client, auth, first["id"])["queue"] is None


def test_one_read_of_the_queue_serves_every_stream_and_agrees_with_a_poll(settings, make_redis, own_database,
                                                                         client_for, images):
    local = replace(settings, redis_url=make_redis().url(0), database_url=own_database)
    client, auth = client_for(local)
    ids = [submit(client, auth, images, TINY).get_json()["id"] for _ in range(5)]
    services, board, statements = Services(local), Board(max_age=60), []
    with services.db.session() as session:
        jobs = {job.id: (job.created_at, job.prediction) for job in session.scalars(select(Job))}
    event.listen(services.db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for _ in range(20):  # twenty streams of each job refresh
        for job_id in ids:
            created_at, prediction = jobs[job_id]
            polled = QueueOut(**get(client, auth, job_id)["queue"])
            assert board.standing(services.db, services.redis, created_at, job_id, prediction) == polled
    assert [polled.position for polled in (QueueOut(**get(client, auth, i)["queue"]) for i in ids)] == [0, 1, 2, 3, 4]
    assert len(statements) == 2, statements  # the queued jobs, the running ones: once
    services.db.dispose()


def test_a_batch_is_one_busy_worker_to_the_jobs_queued_behind_it(settings, make_redis, own_database, client_for,
                                                                 images):
    """Each job of a batch holds a claim of its own, all of one worker process: that worker is free
    after the last of them. Two live workers: one runs a batch of three with 10 s left, the other
    a job with 300 s left; one job of 100 s is queued ahead: ours starts when the first worker has
    run that one, in 110 s (a batch counted as three busy workers said 10)."""
    local = replace(settings, redis_url=make_redis().url(0), database_url=own_database)
    services = Services(local)
    for node in ("a@gpu-a", "b@gpu-b"):
        report_device(services.redis, node, {"device": "cpu", "name": "CPU", "memory_bytes": 2**40, "precision": "fp32"})
    client, auth = client_for(local)
    batch, lone, ahead, ours = ([submit(client, auth, images, TINY).get_json()["id"] for _ in range(n)] for n in (3, 1, 1, 1))
    predicted = {"device": "cpu", "seconds": 100.0, "memory_mb": 1000.0, "measured": True}
    with services.db.session() as session:
        session.execute(update(Job).where(Job.id.in_(ahead + ours)).values(prediction=predicted))
        session.commit()
        for owner, job_id, left in [(f"gpu-a:11:c{n}", job_id, 10.0) for n, job_id in enumerate(batch)] \
                + [("gpu-b:22:c0", lone[0], 300.0)]:
            assert lifecycle.claim(session, job_id, owner, 60, 3)
            lifecycle.renew(session, job_id, owner, 60, {"iteration": 1, "total": 2, "losses": {"total": 1.0},
                                                         "eta_seconds": left})
    queue = get(client, auth, ours[0])["queue"]
    assert queue["position"] == 1 and queue["workers"] == 2
    assert queue["starts_in_seconds"] == pytest.approx(110, abs=2) and queue["eta_seconds"] == pytest.approx(210, abs=2)
    services.db.dispose()


def test_a_page_of_a_list_tells_each_queued_job_where_it_stands_in_one_query(settings, make_redis, own_database,
                                                                           client_for, images):
    local = replace(settings, redis_url=make_redis().url(0), database_url=own_database)  # the window on each backend
    client, auth = client_for(local)
    ids = [submit(client, auth, images, TINY).get_json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[1]}/cancel", headers=auth)  # no longer ahead of the others
    polled = {job_id: get(client, auth, job_id)["queue"] for job_id in ids}
    assert [polled[job_id] and polled[job_id]["position"] for job_id in ids] == [0, None, 1, 2, 3]
    engine = client.application.extensions["atelier"].db.engine
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    newest = client.get("/v1/jobs?limit=2", headers=auth).get_json()
    older = client.get(f"/v1/jobs?limit=3&cursor={newest['next_cursor']}", headers=auth).get_json()
    assert {j["id"]: j["queue"] for j in newest["data"] + older["data"]} == polled
    # each page: the caller's key, its jobs, their snapshots, and one query for the jobs ahead of each
    # of its queued ones (and one for the running jobs, were a worker live), however long the queue
    assert len(statements) == 8, statements
    assert all(j["queue"] is None for j in client.get("/v1/jobs?status=canceled", headers=auth).get_json()["data"])


def test_a_job_put_back_in_the_queue_comes_back_with_where_it_stands(settings, make_redis, own_database,
                                                                    client_for, images):
    """A worker that hands its job back (SIGTERM) announces it `queued` with no standing: it has
    no board of the queue. Its stream sends that status with the job's standing, as a poll says it."""
    local = replace(settings, redis_url=make_redis().url(0), database_url=own_database)
    client, auth = client_for(local)
    _older, job_id = (submit(client, auth, images, TINY).get_json()["id"] for _ in range(2))
    services = Services(local)
    with services.db.session() as session:
        assert lifecycle.claim(session, job_id, "gpu0@host", 60, 3)  # a worker takes the newer one first
    stream = stream_events(client.get(f"/v1/jobs/{job_id}/events", headers=auth, buffered=False))
    kind, data = next(stream)
    assert (kind, data["status"], data["queue"]) == ("status", "running", None)

    with services.db.session() as session:  # ... and hands it back, as `worker.runner` does
        assert lifecycle.release(session, job_id, "gpu0@host", None)
        job = session.get(Job, job_id, options=[selectinload(Job.snapshots)])
        sent = job_out(job).model_dump(mode="json")
        events.publish(services.redis, job_id, "status", sent)
    assert sent["queue"] is None
    kind, data = next(stream)
    assert (kind, data["status"]) == ("status", "queued")
    assert data["queue"] == get(client, auth, job_id)["queue"]
    assert data["queue"] == {"position": 1, "workers": 0, "starts_in_seconds": None, "eta_seconds": None}
    services.db.dispose()


@pytest.mark.slow
def test_a_queued_job_is_told_the_jobs_ahead_and_when_it_starts_live(worker_settings, make_redis, own_database,
                                                                     workers, client_for, images):
    local = replace(worker_settings, redis_url=make_redis().url(0), database_url=own_database,
                    metrics_token="metrics")
    client, auth = client_for(local)
    workers(local)
    wait_for(lambda: working_devices(redis.Redis.from_url(local.redis_url)), timeout=60, what="the worker to be live")
    running = submit(client, auth, images, LONG).get_json()
    wait_for(lambda: (get(client, auth, running["id"])["progress"] or {}).get("eta_seconds"), timeout=120,
             what="the long job to report its ETA")
    ahead, last = (submit(client, auth, images, params).get_json() for params in (LONG, TINY))  # ahead: canceled unrun
    stream = stream_events(client.get(f"/v1/jobs/{last['id']}/events", headers=auth, buffered=False))

    left = get(client, auth, running["id"])["progress"]["eta_seconds"]
    first, second = get(client, auth, ahead["id"]), get(client, auth, last["id"])
    assert get(client, auth, running["id"])["queue"] is None  # it started
    listed = {j["id"]: j["queue"] for j in client.get("/v1/jobs", headers=auth).get_json()["data"]}
    assert listed[running["id"]] is None
    for job in (first, second):  # a list tells the same, read a moment later
        assert listed[job["id"]]["position"] == job["queue"]["position"]
        assert listed[job["id"]]["starts_in_seconds"] == pytest.approx(job["queue"]["starts_in_seconds"], abs=2.5)
    assert first["queue"]["position"] == 0 and second["queue"]["position"] == 1
    assert first["queue"]["workers"] == second["queue"]["workers"] == 1
    # one worker: the next job starts when the running one ends (its own ETA, a second apart at
    # most between these reads), the one after it once the next one's predicted run is done too
    assert first["queue"]["starts_in_seconds"] == pytest.approx(left, abs=2.5)
    own = first["prediction"]["seconds"]
    assert second["queue"]["starts_in_seconds"] - first["queue"]["starts_in_seconds"] == pytest.approx(own, abs=2.5)
    for job in (first, second):
        assert job["queue"]["eta_seconds"] == pytest.approx(job["queue"]["starts_in_seconds"]
                                                            + job["prediction"]["seconds"], abs=0.11)
    # the deployment's metrics, to scale workers on: the work queued, and the wait a job submitted
    # now would face, at the end of the queue: once the last one queued is done
    scrape = client.get("/metrics", headers={"Authorization": "Bearer metrics"}).get_data(as_text=True)
    gauges = {s.name: s.value for family in text_string_to_metric_families(scrape) for s in family.samples}
    assert gauges["atelier_queue_work_seconds"] == pytest.approx(own + second["prediction"]["seconds"], abs=0.01)
    assert gauges["atelier_queue_wait_seconds"] == pytest.approx(second["queue"]["eta_seconds"], abs=2.5)

    kind, data = next(stream)
    assert kind == "status" and data["queue"]["position"] == 1
    client.post(f"/v1/jobs/{ahead['id']}/cancel", headers=auth)
    # within a refresh (the keep-alive, here 1 s) the stream says it is next, its start now the running job's end
    kind, data = next((k, d) for k, d in stream if k != "queue" or d["position"] == 0)  # not those sent before
    assert kind == "queue", (kind, data)
    assert data["starts_in_seconds"] == pytest.approx(get(client, auth, running["id"])["progress"]["eta_seconds"],
                                                      abs=2.5)

    operator = make_operator(local)
    page = client.get("/admin/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    client.post("/admin/sign-in", data={"name": operator, "password": OPERATOR_PASSWORD, "csrf_token": token})
    state = client.get(f"/admin/jobs/{last['id']}/state.json").get_json()
    assert state["queue"]["position"] == 0 and state["queue"]["workers"] == 1

    client.post(f"/v1/jobs/{running['id']}/cancel", headers=auth)
    rest = list(stream)
    statuses = [data["status"] for kind, data in rest if kind == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses, statuses
    after_start = rest[next(i for i, (k, d) in enumerate(rest) if k == "status" and d["status"] == "running"):]
    assert all(kind != "queue" and (kind != "status" or data["queue"] is None) for kind, data in after_start)
    assert wait_status(client, auth, last["id"], TERMINAL)["queue"] is None
