"""Flower, the tool operators already run, against a running stack: the workers send task events,
and a job's task state says how the job ended (succeeded: SUCCESS, failed: FAILURE with the
error code, canceled: REVOKED), read from Flower's HTTP API."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from api.stack import free_port
from shared.broker import GPU_QUEUE, RUN_JOB, create_celery
from shared.storage import input_key, sha256
from tests.service.helpers import ROOT, TERMINAL, make_settings, png, submit, wait_for, wait_status

pytestmark = pytest.mark.slow


def flower_api(base: str, path: str):
    try:
        with urllib.request.urlopen(f"{base}{path}", timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def test_flower_shows_the_workers_and_each_jobs_outcome(make_redis, private_database, tmp_path, workers, images,
                                                       client_for, make_app):
    settings = make_settings(private_database, make_redis().url(0), tmp_path / "storage")
    worker = workers(settings)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | settings.to_env() | {"FLOWER_UNAUTHENTICATED_API": "true"}
    with open(tmp_path / "flower.log", "wb") as log:
        flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower",
                                   f"--port={port}", "--address=127.0.0.1"], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        node = wait_for(lambda: next((name for name in flower_api(base, "/api/workers") or {}
                                      if name.startswith("test-")), None), timeout=60, interval=0.5,
                        what="Flower to list the worker")
        client, auth = client_for(settings)

        succeeded = submit(client, auth, images, {"size": 32, "iterations": 3}).get_json()["id"]
        assert wait_status(client, auth, succeeded, TERMINAL)["status"] == "succeeded"

        # failed: submitted where no worker listens, its content removed from storage, then sent
        quiet = make_app(replace(settings, redis_url=settings.redis_url[:-1] + "1")).test_client()
        content = png(30, 20, 99)
        failed = submit(quiet, auth, {"content": content, "style": images["style"]},
                        {"size": 32, "iterations": 3}).get_json()["id"]
        Path(settings.storage_dir, input_key(sha256(content))).unlink()
        create_celery(settings).send_task(RUN_JOB, args=[failed], queue=GPU_QUEUE)
        assert wait_status(client, auth, failed, TERMINAL)["error"]["code"] == "input_missing"

        canceled = submit(client, auth, images, {"size": 32, "iterations": 1000}).get_json()["id"]
        wait_for(lambda: (client.get(f"/v1/jobs/{canceled}", headers=auth).get_json()["progress"] or {})
                 .get("iteration", 0) >= 2, timeout=120, what="the job to run")
        assert client.post(f"/v1/jobs/{canceled}/cancel", headers=auth).status_code == 202
        assert wait_status(client, auth, canceled, TERMINAL)["status"] == "canceled"

        def states():
            tasks = flower_api(base, "/api/tasks") or {}
            by_job = {json.loads(t["args"].replace("'", '"'))[0]: t for t in tasks.values()
                      if t.get("name") == RUN_JOB and t.get("args")}
            wanted = {succeeded: "SUCCESS", failed: "FAILURE", canceled: "REVOKED"}
            return by_job if all(by_job.get(j, {}).get("state") == s for j, s in wanted.items()) else None
        by_job = wait_for(states, timeout=60, interval=0.5, what="Flower to show the three outcomes")
        assert "input_missing" in by_job[failed]["exception"]
        assert by_job[succeeded]["worker"] == node and by_job[canceled]["worker"] == node
        assert "Traceback" not in worker.output()  # an expected outcome, not a crash
    finally:
        flower.terminate()
        flower.wait(30)
