"""The service on object storage: `ATELIER_STORAGE_URL=s3://bucket/prefix` against a real
S3-compatible server process (moto_server on loopback), with real workers. The storage paths of
the local suite, again: submission, snapshots, results (streamed or by presigned redirect),
checkpoint resume after a worker is killed, delete, and the store going away mid-job."""
from __future__ import annotations

import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from shared.models import Job
from shared.services import Services
from shared.storage import input_key, sha256
from shared.storage_s3 import S3Storage
from tests.service import faults
from tests.service.helpers import (TERMINAL, bearer, make_settings, new_key, png, submit, wait_checkpointed, wait_for,
                                   wait_resent, wait_status)



@pytest.fixture(scope="session")
def s3_prefix(database_url, s3_server) -> str:
    """Each database backend's objects under a prefix of their own in the one bucket."""
    return f"run-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3_settings(database_url, redis_server, s3_server, s3_prefix, tmp_path_factory):
    """Redis database 4 (its own worker); ATELIER_STORAGE_DIR points at a folder that must never appear."""
    unused = tmp_path_factory.mktemp("no-local-storage") / "storage"
    return make_settings(database_url, redis_server.url(4), unused,
                         storage_url=f"s3://{s3_server.BUCKET}/{s3_prefix}")


@pytest.fixture(scope="session")
def s3_worker(s3_settings, spawn_worker):
    process = spawn_worker(s3_settings)
    yield process
    process.stop()


@pytest.fixture
def s3_client(s3_settings, s3_worker, make_app):
    return make_app(s3_settings).test_client()


@pytest.fixture
def s3_auth(s3_settings) -> dict[str, str]:
    return bearer(new_key(s3_settings))


def test_inputs_are_stored_once_by_content_in_the_bucket(s3_client, s3_auth, s3_server, s3_prefix, s3_settings):
    content, style = png_bytes(21), png_bytes(22)
    before = set(s3_server.keys(f"{s3_prefix}/inputs/"))
    first = submit(s3_client, s3_auth, {"content": content, "style": style}, {"size": 32, "iterations": 2}).get_json()
    second = submit(s3_client, s3_auth, {"content": content, "style": style}, {"size": 32, "iterations": 3},
                    styles=("style", "style")).get_json()
    assert first["id"] != second["id"]
    # five uploads, two distinct images: two objects, each named by the sha256 of its bytes
    added = set(s3_server.keys(f"{s3_prefix}/inputs/")) - before
    assert added == {f"{s3_prefix}/{input_key(sha256(content))}", f"{s3_prefix}/{input_key(sha256(style))}"}
    for key in added:
        body = s3_server.client().get_object(Bucket=s3_server.BUCKET, Key=key)["Body"].read()
        assert key.endswith(sha256(body))
    for job in (first, second):
        assert wait_status(s3_client, s3_auth, job["id"], TERMINAL)["status"] == "succeeded"
    assert not Path(s3_settings.storage_dir).exists()  # nothing local, on the API or the worker


def test_a_job_on_s3_runs_to_a_result_with_snapshots(s3_client, s3_auth, images, s3_server, s3_prefix):
    job = submit(s3_client, s3_auth, images, {"size": 32, "iterations": 6, "snapshot_every": 2}).get_json()
    done = wait_status(s3_client, s3_auth, job["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    assert [s["iteration"] for s in done["snapshots"]] == [2, 4]
    prefix = f"{s3_prefix}/jobs/{job['id']}/"
    keys = sorted(key.removeprefix(prefix) for key in s3_server.keys(prefix))
    claim = keys[0].removeprefix("result-").removesuffix(".png")  # each output named for the claim that ran it
    assert keys == [f"result-{claim}.png", f"snapshots/000002-{claim}.png", f"snapshots/000004-{claim}.png"]
    # the checkpoint went with success

    response = s3_client.get(done["result"]["url"], headers=s3_auth)
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["ETag"] == f'"{sha256(response.data)}"'
    assert response.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    cached = s3_client.get(done["result"]["url"], headers=s3_auth | {"If-None-Match": response.headers["ETag"]})
    assert cached.status_code == 304 and cached.data == b""
    snapshot = s3_client.get(done["snapshots"][1]["url"], headers=s3_auth)
    assert snapshot.status_code == 200 and snapshot.data == s3_server.client().get_object(
        Bucket=s3_server.BUCKET, Key=f"{prefix}snapshots/000004-{claim}.png")["Body"].read()


def test_results_and_snapshots_can_be_served_by_presigned_redirect(s3_client, s3_auth, images, s3_settings, make_app,
                                                                  s3_server):
    job = submit(s3_client, s3_auth, images, {"size": 32, "iterations": 4, "snapshot_every": 2,
                                              "output_format": "webp"}).get_json()
    done = wait_status(s3_client, s3_auth, job["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    streamed = s3_client.get(done["result"]["url"], headers=s3_auth)

    client = make_app(replace(s3_settings, storage_redirect_seconds=600)).test_client()
    for url in (done["result"]["url"], done["snapshots"][0]["url"]):
        response = client.get(url, headers=s3_auth)
        assert response.status_code == 302 and response.data == b""
        assert response.headers["Location"].startswith(f"{s3_server.endpoint}/{s3_server.BUCKET}/")
        assert "X-Amz-Expires=600" in response.headers["Location"]
        assert response.headers["Cache-Control"] == "private, max-age=300"  # never outlives the signature
        with urllib.request.urlopen(response.headers["Location"], timeout=10) as fetched:  # no credentials sent
            data = fetched.read()
            assert fetched.headers["Content-Type"] == "image/webp"
            assert fetched.headers["Cache-Control"] == "private, max-age=31536000, immutable"
        assert response.headers["ETag"] == f'"{sha256(data)}"'  # the ETag names the bytes behind the redirect
        again = client.get(url, headers=s3_auth | {"If-None-Match": response.headers["ETag"]})
        assert again.status_code == 304 and "Location" not in again.headers
    assert client.get(done["result"]["url"], headers=s3_auth).headers["ETag"] == streamed.headers["ETag"]
    assert client.get(done["result"]["url"]).status_code == 401  # the redirect is for the owner only


def test_deleting_a_job_removes_every_object_under_its_prefix(s3_client, s3_auth, images, s3_server, s3_prefix):
    unique = {"content": png_bytes(7), "style": images["style"]}
    job = submit(s3_client, s3_auth, unique, {"size": 32, "iterations": 6, "snapshot_every": 1}).get_json()
    assert wait_status(s3_client, s3_auth, job["id"], TERMINAL)["status"] == "succeeded"
    bucket, client = s3_server.BUCKET, s3_server.client()
    prefix = f"{s3_prefix}/jobs/{job['id']}/"
    for n in range(1005):  # more than one listing page (1000 keys) and one DeleteObjects call
        client.put_object(Bucket=bucket, Key=f"{prefix}snapshots/extra-{n:04d}", Body=b"x")
    neighbour = f"{s3_prefix}/jobs/{job['id']}-not-this-job/keep"
    client.put_object(Bucket=bucket, Key=neighbour, Body=b"keep")
    assert len(s3_server.keys(prefix)) == 1005 + 6

    assert s3_client.delete(f"/v1/jobs/{job['id']}", headers=s3_auth).status_code == 204
    assert s3_server.keys(prefix) == []
    assert s3_server.keys(neighbour) == [neighbour]
    assert s3_server.keys(f"{s3_prefix}/{input_key(sha256(unique['content']))}") == []  # used by no other job
    assert s3_server.keys(f"{s3_prefix}/{input_key(sha256(images['style']))}") != []    # still used by others


def png_bytes(seed: int) -> bytes:
    return png(40, 30, seed)


def test_a_job_resumes_from_its_checkpoint_in_the_bucket_when_its_worker_dies(redis_server, s3_settings, s3_server,
                                                                            s3_prefix, spawn_worker, images, client_for):
    local = replace(s3_settings, redis_url=redis_server.url(5))
    client, auth = client_for(local)
    first = spawn_worker(local)
    job_id = submit(client, auth, images, {"size": 32, "iterations": 150, "snapshot_every": 0}).get_json()["id"]
    services = Services(local)
    wait_checkpointed(services, job_id)
    assert s3_server.keys(f"{s3_prefix}/jobs/{job_id}/checkpoint-")
    faults.kill_worker(first)
    with services.db.session() as session:
        stopped_at = session.get(Job, job_id).progress["iteration"]

    second = spawn_worker(local)
    wait_resent(services, job_id)
    done = wait_status(client, auth, job_id, TERMINAL, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and 0 < done["progress"]["resumed_from"] <= stopped_at + 10
    assert f"job {job_id}: resuming from iteration" in second.output()
    # deleted once the outcome is recorded (never before), so a moment after the status says so
    wait_for(lambda: s3_server.keys(f"{s3_prefix}/jobs/{job_id}/checkpoint-") == [], timeout=30,
             what="the checkpoint to be deleted from the bucket")
    second.stop()


def test_the_store_going_away_mid_job_skips_snapshots_and_fails_the_result(s3_client, s3_auth, images, s3_server,
                                                                          s3_worker, s3_settings):
    job = submit(s3_client, s3_auth, images, {"size": 32, "iterations": 300, "snapshot_every": 10}).get_json()

    def stored_a_snapshot():
        current = s3_client.get(f"/v1/jobs/{job['id']}", headers=s3_auth).get_json()
        assert current["status"] in ("queued", "running"), current
        return current["snapshots"] and current
    running = wait_for(stored_a_snapshot, timeout=120, what="a snapshot in the bucket")
    faults.stop_s3(s3_server)
    try:
        at_stop = s3_client.get(f"/v1/jobs/{job['id']}", headers=s3_auth).get_json()["progress"]["iteration"]
        done = wait_status(s3_client, s3_auth, job["id"], TERMINAL, timeout=240)
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "storage_error" and "storage" in done["error"]["message"]
        assert done["result"] is None and done["progress"]["iteration"] == 300  # the engine ran to the end
        log = s3_worker.output()
        assert f"job {job['id']}: snapshot at iteration" in log and "skipped: storage error" in log
        assert f"job {job['id']}: the result could not be stored" in log
        # only snapshots that landed before the outage are recorded (one may have been on its way)
        assert max(s["iteration"] for s in done["snapshots"]) <= at_stop + 10
        # the API says the store is down, in problem+json, and never 500s
        response = s3_client.get(running["snapshots"][0]["url"], headers=s3_auth)
        assert response.status_code == 503 and response.mimetype == "application/problem+json"
        assert response.headers["Retry-After"] and "storage" in response.get_json()["detail"]
        refused = submit(s3_client, s3_auth, {"content": png_bytes(11), "style": images["style"]}, {"size": 32})
        assert refused.status_code == 503 and refused.mimetype == "application/problem+json"
    finally:
        faults.start_s3(s3_server)
    assert len(s3_client.get("/v1/jobs?limit=100", headers=s3_auth).get_json()["data"]) == 1  # nothing half-made
    later = submit(s3_client, s3_auth, images, {"size": 32, "iterations": 2}).get_json()
    assert wait_status(s3_client, s3_auth, later["id"], TERMINAL)["status"] == "succeeded"


def test_storage_urls_choose_the_backend(tmp_path, s3_server):
    from shared.config import Settings
    from shared.storage import LocalStorage, open_storage

    assert isinstance(open_storage(Settings(storage_dir=tmp_path / "a")), LocalStorage)
    assert open_storage(Settings(storage_url=f"file://{tmp_path}/b")).root == (tmp_path / "b").resolve()
    assert open_storage(Settings(storage_url=str(tmp_path / "c"))).root == (tmp_path / "c").resolve()
    s3 = open_storage(Settings(storage_url=f"s3://{s3_server.BUCKET}/some/prefix/"))
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == (s3_server.BUCKET, "some/prefix")
    with pytest.raises(ValueError, match="ATELIER_STORAGE_URL"):
        open_storage(Settings(storage_url="gs://bucket/x"))
    with pytest.raises(ValueError):
        s3.put("../escape", b"x")
