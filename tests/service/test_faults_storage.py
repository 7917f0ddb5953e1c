"""Storage faults, injected for real (tests/service/faults.py puts a file where a job's directory
belongs, so writes under it fail, as root too): a snapshot that cannot be written is skipped
with a logged reason; a result that cannot be written fails the job with `storage_error`; a
write that fails leaves nothing half-written behind."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.broker import GPU_QUEUE, RUN_JOB, create_celery
from shared.storage import LocalStorage, StorageError
from tests.service import faults
from tests.service.helpers import TERMINAL, submit, wait_status


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".tmp-*")] if folder.is_dir() else True


def run_on_the_worker(worker_settings, job_id: str) -> None:
    """Submitted where no worker listens (so the fault is in place first), then handed to the live one."""
    create_celery(worker_settings).send_task(RUN_JOB, args=[job_id], queue=GPU_QUEUE)


def test_a_snapshot_that_cannot_be_stored_is_skipped_with_a_reason(client, auth, images, settings, worker,
                                                                   worker_settings):
    job_id = submit(client, auth, images, {"size": 32, "iterations": 6, "snapshot_every": 2}).get_json()["id"]
    snapshots = Path(settings.storage_dir) / "jobs" / job_id / "snapshots"
    faults.break_storage(snapshots)
    try:
        run_on_the_worker(worker_settings, job_id)
        done = wait_status(client, auth, job_id, TERMINAL)
    finally:
        faults.repair_storage(snapshots)
    assert done["status"] == "succeeded", done["error"]
    assert done["snapshots"] == []  # none recorded, so none served
    assert f"job {job_id}: snapshot at iteration 2 skipped: storage error" in worker.output()
    assert client.get(f"/v1/jobs/{job_id}/snapshots/2", headers=auth).status_code == 404
    assert client.get(done["result"]["url"], headers=auth).status_code == 200
    assert no_temp_files(Path(settings.storage_dir) / "jobs" / job_id)


def test_a_result_that_cannot_be_stored_fails_the_job_cleanly(client, auth, images, settings, worker, worker_settings):
    job_id = submit(client, auth, images, {"size": 32, "iterations": 4, "snapshot_every": 2}).get_json()["id"]
    folder = Path(settings.storage_dir) / "jobs" / job_id
    faults.break_storage(folder)
    try:
        run_on_the_worker(worker_settings, job_id)
        done = wait_status(client, auth, job_id, TERMINAL)
    finally:
        faults.repair_storage(folder)
    assert done["status"] == "failed" and done["result"] is None and done["snapshots"] == []
    assert done["error"]["code"] == "storage_error" and "storage" in done["error"]["message"]
    assert client.get(f"/v1/jobs/{job_id}/result", headers=auth).status_code == 404
    assert f"job {job_id}: the result could not be stored" in worker.output()


def test_a_failed_write_leaves_the_old_object_whole_and_no_partial_file(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("jobs/x/result.png", b"the old image")
    target = tmp_path / "jobs" / "x" / "result.png"
    with pytest.raises(StorageError):
        storage.put("jobs/x/result.png/inner", b"cannot: the parent is a file")
    # the rename is what publishes a write: make it fail after the data was written
    target_dir = tmp_path / "jobs" / "y" / "result.png"
    target_dir.mkdir(parents=True)
    (target_dir / "keep").write_bytes(b"x")
    with pytest.raises(StorageError):
        storage.put("jobs/y/result.png", b"new bytes that never become visible")
    assert storage.get("jobs/x/result.png") == b"the old image" and target.read_bytes() == b"the old image"
    assert no_temp_files(tmp_path)
