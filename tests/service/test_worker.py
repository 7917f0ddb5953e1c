"""Jobs through a real Celery worker process: results, snapshots, events, cancellation, failures."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from shared.broker import GPU_QUEUE, RUN_JOB, create_celery
from shared.storage import input_key, sha256
from tests.service.helpers import TERMINAL, read_events, submit, wait_for, wait_status


def test_a_job_runs_to_a_result_with_snapshots(live_client, live_auth, images):
    job = submit(live_client, live_auth, images, {"size": 32, "iterations": 6, "snapshot_every": 2}).get_json()
    done = wait_status(live_client, live_auth, job["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1 and done["error"] is None
    assert done["started_at"] and done["finished_at"] >= done["started_at"]
    progress = done["progress"]
    assert progress["iteration"] == progress["total"] == 6 and progress["percent"] == 100.0
    assert set(progress["losses"]) >= {"content", "style", "total"} and progress["resumed_from"] is None
    assert [s["iteration"] for s in done["snapshots"]] == [2, 4]
    result = done["result"]
    assert (result["width"], result["height"]) == (32, 24) and set(result["quality"]) == {"style_distance", "content_distance"}

    response = live_client.get(result["url"], headers=live_auth)
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert Image.open(io.BytesIO(response.data)).size == (32, 24)
    etag = response.headers["ETag"]
    assert etag == f'"{sha256(response.data)}"'
    assert "max-age" in response.headers["Cache-Control"] and "private" in response.headers["Cache-Control"]
    cached = live_client.get(result["url"], headers=live_auth | {"If-None-Match": etag})
    assert cached.status_code == 304 and cached.data == b""

    snapshot = live_client.get(done["snapshots"][0]["url"], headers=live_auth)
    assert snapshot.status_code == 200 and snapshot.mimetype == "image/png" and snapshot.headers["ETag"]
    assert live_client.get(f"/v1/jobs/{job['id']}/snapshots/3", headers=live_auth).status_code == 404


def test_output_format_sets_the_content_type(live_client, live_auth, images):
    job = submit(live_client, live_auth, images, {"size": 32, "iterations": 2, "snapshot_every": 1,
                                                  "output_format": "jpeg"}).get_json()
    done = wait_status(live_client, live_auth, job["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    for url in (done["result"]["url"], done["snapshots"][0]["url"]):
        response = live_client.get(url, headers=live_auth)
        assert response.mimetype == "image/jpeg" and Image.open(io.BytesIO(response.data)).format == "JPEG"


def test_events_stream_status_progress_and_snapshots(live_client, live_auth, images):
    job = submit(live_client, live_auth, images, {"size": 32, "iterations": 8, "snapshot_every": 3}).get_json()
    response = live_client.get(f"/v1/jobs/{job['id']}/events", headers=live_auth, buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = read_events(response)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "status" and events[0][1]["id"] == job["id"]
    assert events[-1][0] == "status" and events[-1][1]["status"] == "succeeded"
    assert "progress" in kinds
    assert [data["iteration"] for kind, data in events if kind == "snapshot"] == [3, 6]
    final_progress = [data for kind, data in events if kind == "progress"][-1]
    assert final_progress["iteration"] == final_progress["total"] == 8


def test_events_of_a_finished_job_end_at_once(live_client, live_auth, images):
    job = submit(live_client, live_auth, images, {"size": 32, "iterations": 2}).get_json()
    wait_status(live_client, live_auth, job["id"], TERMINAL)
    events = read_events(live_client.get(f"/v1/jobs/{job['id']}/events", headers=live_auth, buffered=False))
    assert [(kind, data["status"]) for kind, data in events] == [("status", "succeeded")]


def wait_running(client, auth, job_id: str, iteration: int = 3) -> dict:
    def running():
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
        assert job["status"] in ("queued", "running"), job
        return job if job["status"] == "running" and (job["progress"] or {}).get("iteration", 0) >= iteration else None
    return wait_for(running, timeout=180, what=f"job {job_id} to run")


def test_cancel_a_running_job_keeps_its_snapshots(live_client, live_auth, images):
    job = submit(live_client, live_auth, images, {"size": 64, "iterations": 1000, "snapshot_every": 2}).get_json()
    wait_running(live_client, live_auth, job["id"])
    response = live_client.post(f"/v1/jobs/{job['id']}/cancel", headers=live_auth)
    assert response.status_code == 202 and response.get_json()["status"] == "running"
    done = wait_status(live_client, live_auth, job["id"], TERMINAL, timeout=30)
    assert done["status"] == "canceled" and done["result"] is None and done["error"] is None
    assert 3 <= done["progress"]["iteration"] < 1000
    assert done["snapshots"]
    assert live_client.get(done["snapshots"][0]["url"], headers=live_auth).status_code == 200


def test_delete_a_running_job_stops_it_and_removes_its_files(live_client, live_auth, images, worker, worker_settings):
    job = submit(live_client, live_auth, images, {"size": 64, "iterations": 1000, "snapshot_every": 1}).get_json()
    wait_running(live_client, live_auth, job["id"])
    assert live_client.delete(f"/v1/jobs/{job['id']}", headers=live_auth).status_code == 204
    wait_for(lambda: f"job {job['id']}: lease lost" in worker.output(), timeout=30, what="the worker to stop")
    folder = Path(worker_settings.storage_dir) / "jobs" / job["id"]
    # a checkpoint write already under way when the row went finishes, then removes its file
    wait_for(lambda: not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()], timeout=30,
             what="the job's files to be gone")


def test_a_duplicate_delivery_never_runs_a_job_twice(live_app, live_client, live_auth, images, worker):
    job = submit(live_client, live_auth, images, {"size": 32, "iterations": 4}).get_json()
    live_app.extensions["celery"].send_task(RUN_JOB, args=[job["id"]], queue=GPU_QUEUE)
    done = wait_status(live_client, live_auth, job["id"], TERMINAL)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    wait_for(lambda: f"job {job['id']}: not claimed" in worker.output(), timeout=30, what="the duplicate to be dropped")
    assert worker.output().count(f"job {job['id']}: claimed by") == 1


def test_a_missing_input_fails_with_a_clear_code(client, auth, images, settings, worker, worker_settings):
    # submitted where no worker listens, its input removed, then handed to the live worker
    unique = {**images, "content": images["style2"]}
    job = submit(client, auth, unique, {"size": 32, "iterations": 2}).get_json()
    Path(settings.storage_dir, input_key(sha256(images["style2"]))).unlink()
    create_celery(worker_settings).send_task(RUN_JOB, args=[job["id"]], queue=GPU_QUEUE)
    done = wait_status(client, auth, job["id"], TERMINAL)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "input_missing" and "missing" in done["error"]["message"]
