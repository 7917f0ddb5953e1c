"""The claim, the sweep and checkpoints: a job runs once, survives a lost message or a dead worker."""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import update

from shared import lifecycle
from shared.broker import GPU_QUEUE, create_celery
from shared.models import Base, Job, utcnow
from shared.services import Services
from shared.storage import job_prefix, sha256
from tests.service import faults
from tests.service.helpers import TERMINAL, submit, wait_checkpointed, wait_resent, wait_status
from worker.lease import Lease
from worker.runner import JobRun
from worker.sweep import sweep


def test_migrations_create_exactly_the_models(settings):
    services = Services(settings)
    with services.db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    services.db.dispose()


def queued_job(client, auth, images) -> str:
    return submit(client, auth, images, {"size": 32, "iterations": 2}).get_json()["id"]


def test_the_claim_is_a_compare_and_set(client, auth, images, settings):
    job_id = queued_job(client, auth, images)
    db = Services(settings).db
    with db.session() as session:
        assert lifecycle.claim(session, job_id, "worker-a", 60, 3) is True
        assert lifecycle.claim(session, job_id, "worker-b", 60, 3) is False  # live lease: no second run
        assert lifecycle.renew(session, job_id, "worker-b", 60) is False      # and no writes from the loser
        assert lifecycle.renew(session, job_id, "worker-a", 60) is None       # the holder renews; no cancel asked
        assert lifecycle.finish(session, job_id, "worker-b", lifecycle.JobStatus.SUCCEEDED) is False
        # the lease expires (worker-a died): now another worker may take it over
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        assert lifecycle.claim(session, job_id, "worker-b", 60, 3) is True
        assert lifecycle.renew(session, job_id, "worker-a", 60) is False      # the old holder has lost it
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.lease_owner) == ("running", 2, "worker-b")
    db.dispose()


def test_one_heartbeat_thread_renews_every_lease_held_and_none_after_its_run(client, auth, images, settings):
    """A process's leases (a batch holds several) are renewed by one thread, started with the first,
    through gaps longer than the lease; a run that ended is renewed no more."""
    services = Services(replace(settings, lease_seconds=1.5))
    ids = [queued_job(client, auth, images) for _ in range(2)]
    leases = [Lease(services, job_id) for job_id in ids]
    assert all(lease.claim() for lease in leases)

    def expires(job_id: str):
        with services.db.session() as session:
            return session.get(Job, job_id).lease_expires_at

    with leases[0].kept_alive():
        with leases[1].kept_alive():
            time.sleep(4)  # no callback renews them: more than two leases' time
            assert all(expires(job_id) > utcnow() for job_id in ids)
            assert [t.name for t in threading.enumerate()].count("heartbeat") == 1
        ended = expires(ids[1])
        time.sleep(1.5)
        assert expires(ids[0]) > utcnow()  # still running: still renewed
    assert expires(ids[1]) == ended < utcnow()  # its run ended: left to expire
    assert all(lease.finish(lifecycle.JobStatus.CANCELED) for lease in leases)  # not for a later test's sweep
    services.db.dispose()


def test_a_lease_whose_outcome_is_recorded_is_renewed_no_more_while_its_batch_runs_on(
        client, auth, images, settings, caplog):
    """A batch's job that ends early (canceled, diverged) records its outcome while its process
    still holds the batch's leases: no renewal of it follows, so none finds it ended and reports
    its lease lost."""
    services = Services(replace(settings, lease_seconds=0.6))
    ids = [queued_job(client, auth, images) for _ in range(2)]
    leases = [Lease(services, job_id) for job_id in ids]
    assert all(lease.claim() for lease in leases)
    with leases[0].kept_alive(), leases[1].kept_alive():
        assert leases[1].finish(lifecycle.JobStatus.CANCELED)
        time.sleep(1.5)  # several heartbeats
    assert not leases[1].lost and "lease lost" not in caplog.text
    assert leases[0].finish(lifecycle.JobStatus.CANCELED)
    services.db.dispose()


def test_cancel_while_running_is_seen_by_the_lease_holder(client, auth, images, settings):
    job_id = queued_job(client, auth, images)
    db = Services(settings).db
    with db.session() as session:
        lifecycle.claim(session, job_id, "worker-a", 60, 3)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 202
    with db.session() as session:
        assert lifecycle.renew(session, job_id, "worker-a", 60) is not None
    db.dispose()


def test_a_claim_whose_lease_ran_out_overwrites_and_deletes_nothing_of_the_claim_after_it(client, auth, images,
                                                                                          settings):
    """A worker frozen past its lease (a long GC pause, a stalled VM) runs on when it thaws: the
    job has meanwhile been claimed again and finished. Its snapshot, checkpoint and result are
    refused, and it removes only what it stored itself: the finished job's files stay whole."""
    job_id = submit(client, auth, images, {"size": 32, "iterations": 4, "snapshot_every": 1}).get_json()["id"]
    services, celery = Services(settings), create_celery(settings)
    stale = JobRun(services, celery, job_id)
    assert stale.lease.claim()
    inputs = stale._inputs(stale._started()[0])
    with services.db.session() as session:  # its lease runs out while it is frozen
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    JobRun(services, celery, job_id).execute()  # the next claim runs the job to its end
    done = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
    assert done["status"] == "succeeded" and [s["iteration"] for s in done["snapshots"]] == [1, 2, 3]
    served = {url: client.get(url, headers=auth) for url in [done["result"]["url"]] + [s["url"] for s in done["snapshots"]]}

    result = stale._stylize(inputs, None)  # it thaws: its first callback writes a snapshot and a checkpoint
    assert stale.lease.lost and result.stopped
    stale._succeed(replace(result, stopped=False), 1)  # or it had got to its end before the freeze

    after = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
    assert after["status"] == "succeeded" and after["result"] == done["result"] and after["snapshots"] == done["snapshots"]
    for url, before in served.items():
        response = client.get(url, headers=auth)
        assert response.status_code == 200 and response.data == before.data, url
        assert response.headers["ETag"] == f'"{sha256(response.data)}"'
    with services.db.session() as session:
        job = session.get(Job, job_id)
        named = {job.result_key} | {s.key for s in job.snapshots}
    stored = {str(path.relative_to(settings.storage_dir)) for path in (settings.storage_dir / job_prefix(job_id)).rglob("*")
              if path.is_file()}
    assert stored == named  # no checkpoint, no image of the frozen claim left behind
    services.db.dispose()


def expire(settings, job_id: str, **values) -> None:
    db = Services(settings).db
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            status="running", lease_owner="dead-worker", lease_expires_at=utcnow() - timedelta(seconds=1), **values))
        session.commit()
    db.dispose()


def test_sweep_fails_a_job_out_of_attempts_and_ends_an_abandoned_cancel(client, auth, images, settings):
    exhausted, abandoned = queued_job(client, auth, images), queued_job(client, auth, images)
    expire(settings, exhausted, attempts=settings.max_attempts)
    expire(settings, abandoned, attempts=1, cancel_requested_at=utcnow())
    report = sweep(Services(settings), create_celery(settings))
    assert exhausted in report.failed and abandoned in report.canceled
    failed = client.get(f"/v1/jobs/{exhausted}", headers=auth).get_json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "attempts_exhausted"
    assert client.get(f"/v1/jobs/{abandoned}", headers=auth).get_json()["status"] == "canceled"


def test_a_job_submitted_while_the_broker_is_down_is_sent_by_the_sweep(make_redis, settings, client_for, images):
    server = make_redis()
    local = replace(settings, redis_url=server.url(0))
    client, auth = client_for(local)
    faults.stop_redis(server)
    assert client.get("/readyz").status_code == 503
    response = submit(client, auth, images, {"size": 32, "iterations": 2})
    assert response.status_code == 202  # the job is safe in SQL even though the broker is not there
    job_id = response.get_json()["id"]
    services = Services(local)
    with services.db.session() as session:
        assert session.get(Job, job_id).enqueued_at is None
    faults.start_redis(server)
    assert client.get("/readyz").status_code == 200
    report = sweep(services, create_celery(local))
    assert job_id in report.resent
    assert services.redis.llen(GPU_QUEUE) == 1
    with services.db.session() as session:
        assert session.get(Job, job_id).enqueued_at is not None
    assert job_id not in sweep(services, create_celery(local)).resent  # sent once, not every sweep


def test_a_job_resumes_from_its_checkpoint_when_its_worker_dies(redis_server, worker_settings, spawn_worker,
                                                                client_for, images):
    # its own Redis database and workers, so the shared test worker cannot pick the job up
    local = replace(worker_settings, redis_url=redis_server.url(2))
    client, auth = client_for(local)
    first = spawn_worker(local)
    job_id = submit(client, auth, images, {"size": 32, "iterations": 150, "snapshot_every": 0}).get_json()["id"]
    services = Services(local)
    wait_checkpointed(services, job_id)
    faults.kill_worker(first)  # the machine dies: no cleanup, the lease stays, the message is unacked
    with services.db.session() as session:
        stopped_at = session.get(Job, job_id).progress["iteration"]
    assert stopped_at < 150

    second = spawn_worker(local)
    wait_resent(services, job_id)
    done = wait_status(client, auth, job_id, TERMINAL, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert 0 < done["progress"]["resumed_from"] <= stopped_at + 10  # not from zero
    assert done["progress"]["iteration"] == 150
    assert f"job {job_id}: resuming from iteration" in second.output()
    second.stop()
