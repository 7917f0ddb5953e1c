"""Retention: the files of jobs that ended longer ago than their account's retention are removed
(result, snapshots, checkpoint, and inputs no job with files uses), the job stays with
`data_removed: true`, and the maintenance task does it in bounded batches."""
from __future__ import annotations

import random
import time
from dataclasses import replace

from sqlalchemy import select

from shared import keys, retention
from shared.broker import SWEEP_RETENTION, create_celery
from shared.models import Account, Job
from shared.services import Services
from shared.storage import input_key, job_prefix, sha256
from tests.service.helpers import TERMINAL, bearer, new_key, png, submit, wait_for, wait_status

SECONDS = 1 / 86400  # a day's fraction: retention in days, tests wait in seconds


def account_of(services: Services, token: str) -> int:
    with services.db.session() as session:
        return keys.live_key(session, token).account_id


def set_retention(services: Services, token: str, days: float | None) -> None:
    with services.db.session() as session:
        assert retention.set_days(session, account_of(services, token), days) is not None


def test_an_accounts_expired_job_files_are_removed_and_the_job_stays(live_client, worker_settings):
    """Two accounts ran jobs on the same (fresh) images. The first keeps files one second, the
    second the server's default (30 days): the sweep removes only the first's files, keeping the
    inputs the second still uses; once the second's retention is short too, the inputs go."""
    services = Services(worker_settings)
    seed = random.randrange(10**6)
    own = {"content": png(40, 30, seed), "style": png(24, 24, seed + 1)}
    first, second = new_key(worker_settings), new_key(worker_settings)
    jobs = {}
    for token in (first, second):
        auth = bearer(token)
        job = submit(live_client, auth, own, {"size": 32, "iterations": 4, "snapshot_every": 2}).get_json()
        jobs[token] = done = wait_status(live_client, auth, job["id"], TERMINAL)
        assert done["status"] == "succeeded" and done["snapshots"] and not done["data_removed"], done
    set_retention(services, first, 1 * SECONDS)
    time.sleep(1.5)

    removed = retention.sweep(services)
    assert jobs[first]["id"] in removed and jobs[second]["id"] not in removed
    auth = bearer(first)
    job = live_client.get(f"/v1/jobs/{jobs[first]['id']}", headers=auth).get_json()
    assert job["data_removed"] is True and job["status"] == "succeeded"
    assert job["result"] is None and job["snapshots"] == [] and job["progress"] == jobs[first]["progress"]
    for url in (jobs[first]["result"]["url"], jobs[first]["snapshots"][0]["url"]):
        gone = live_client.get(url, headers=auth)
        assert gone.status_code == 410 and gone.mimetype == "application/problem+json" and "retention" in gone.get_json()["detail"]
    storage = services.storage
    assert not (storage.root / job_prefix(jobs[first]["id"])).exists()
    digests = [sha256(own["content"]), sha256(own["style"])]
    assert all(storage.exists(input_key(d)) for d in digests)  # the second account's job still uses them
    kept = live_client.get(jobs[second]["result"]["url"], headers=bearer(second))
    assert kept.status_code == 200
    assert jobs[first]["id"] not in retention.sweep(services)  # once only

    set_retention(services, second, 1 * SECONDS)
    assert jobs[second]["id"] in retention.sweep(services)
    assert not any(storage.exists(input_key(d)) for d in digests)
    with services.db.session() as session:
        assert session.get(Job, jobs[second]["id"]).result_bytes is None
    services.db.dispose()


def test_the_maintenance_task_clears_a_backlog_in_bounded_batches(make_redis, worker_settings, private_database,
                                                                   workers, images, tmp_path, client_for):
    """Five ended jobs are due under the server's default; batches of two: the task sends itself
    again while its batch was full, and all five are cleared in three transactions."""
    local = replace(worker_settings, redis_url=make_redis().url(0), database_url=private_database,
                    storage_dir=tmp_path / "storage", retention_days=1 * SECONDS, retention_batch_size=2)
    client, auth = client_for(local)
    ids = []
    for _ in range(5):  # no GPU worker: each job stays queued until canceled, which ends it
        job = submit(client, auth, images, {"size": 32}).get_json()
        assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).get_json()["status"] == "canceled"
        ids.append(job["id"])
    kept_for_ever = new_key(local)
    forever = submit(client, bearer(kept_for_ever), images, {"size": 32}).get_json()
    client.post(f"/v1/jobs/{forever['id']}/cancel", headers=bearer(kept_for_ever))
    services = Services(local)
    set_retention(services, kept_for_ever, 0)  # 0: this account's files are kept for ever
    time.sleep(1.5)

    maintenance = workers(local, ("-Q", "maintenance"))
    create_celery(local).send_task(SWEEP_RETENTION)

    def removed() -> set[str]:
        with services.db.session() as session:
            return set(session.scalars(select(Job.id).where(Job.data_removed_at.is_not(None))))
    wait_for(lambda: removed() == set(ids), timeout=60, what="every due job to be cleared")
    batches = [line for line in maintenance.output().splitlines() if "retention: removed the files of" in line]
    assert [line.split("removed the files of ")[1] for line in batches] == ["2 job(s)", "2 job(s)", "1 job(s)"], batches
    assert forever["id"] not in removed()
    assert services.storage.exists(input_key(sha256(images["content"])))  # the kept job still uses it
    with services.db.session() as session:
        assert session.scalar(select(Account.retention_days).where(
            Account.id == account_of(services, kept_for_ever))) == 0
