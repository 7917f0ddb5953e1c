"""Workers on machines that share nothing but PostgreSQL, Redis and the bucket: two worker
processes, each in an empty working directory of its own with no path to the API's files,
storage on a real S3-compatible server (moto_server). Jobs submitted together finish on both;
a job whose worker is killed resumes on the other from the checkpoint in the bucket."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shared.models import Job
from shared.services import Services
from tests.service import faults
from tests.service.helpers import TERMINAL, make_settings, submit, wait_checkpointed, wait_resent, wait_status

pytestmark = pytest.mark.slow


def test_two_workers_that_share_nothing_split_jobs_and_resume_each_others(postgres_url, make_redis, s3_server,
                                                                          tmp_path, workers, images, client_for):
    prefix = f"fleet-{uuid.uuid4().hex[:8]}"
    # a relative ATELIER_STORAGE_DIR: were it used, it would appear in a worker's empty directory
    settings = make_settings(postgres_url, make_redis().url(0), Path("local-storage"),
                             storage_url=f"s3://{s3_server.BUCKET}/{prefix}")
    machines = {name: tmp_path / name for name in ("machine-a", "machine-b")}
    started = {}
    for name, home in machines.items():
        home.mkdir()
        started[name] = workers(settings, cwd=home, env={"HOME": str(home)})
    client, auth = client_for(settings)

    # jobs submitted together: each worker takes some, all finish (sizes apart, so that neither worker
    # can take them all as one batch)
    jobs = [submit(client, auth, images, {"size": 32 + 8 * n, "iterations": 40}).get_json()["id"] for n in range(4)]
    for job_id in jobs:
        done = wait_status(client, auth, job_id, TERMINAL, timeout=240)
        assert done["status"] == "succeeded", done["error"]
        assert s3_server.keys(f"{prefix}/jobs/{job_id}/result-")  # named for the claim that stored it
    claims = {name: sum(f"job {j}: claimed by" in w.output() for j in jobs) for name, w in started.items()}
    assert claims["machine-a"] >= 1 and claims["machine-b"] >= 1 and sum(claims.values()) == 4, claims

    # a job killed on one machine resumes on the other, from the checkpoint in the bucket
    services = Services(settings)
    long = submit(client, auth, images, {"size": 32, "iterations": 300, "snapshot_every": 0}).get_json()["id"]
    wait_checkpointed(services, long, timeout=120)
    holder = next(name for name, w in started.items() if f"job {long}: claimed by" in w.output())
    other = next(name for name in started if name != holder)
    faults.kill_worker(started[holder])
    with services.db.session() as session:
        stopped_at = session.get(Job, long).progress["iteration"]
    wait_resent(services, long)
    done = wait_status(client, auth, long, TERMINAL, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and 0 < done["progress"]["resumed_from"] <= stopped_at + 10
    assert f"job {long}: resuming from iteration" in started[other].output()

    for home in machines.values():
        assert list(home.iterdir()) == [], home  # nothing written locally: not the storage dir, not a file
    services.db.dispose()
