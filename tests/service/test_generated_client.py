"""A client generated from the live `/v1/openapi.json` by `openapi-python-client` submits a job,
polls it and downloads its result from `atelier run`, used exactly as generated; and the image
routes serve the generic type such clients may ask for."""
from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

PACKAGE = "atelier_generated"


def generate(url: str, directory: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # its post-generation hook runs `ruff` from the venv
    return subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--url", f"{url}/v1/openapi.json",
                           "--output-path", str(directory / PACKAGE), "--meta", "none"], cwd=directory,
                          env=os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")},
                          capture_output=True, text=True, timeout=300)


def test_a_generated_client_submits_polls_and_downloads(live_stack, stack_key, images, tmp_path, monkeypatch):
    generated = generate(live_stack.url, tmp_path)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout and "WARNING" not in generated.stdout, generated.stdout
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        api = importlib.import_module(PACKAGE)
        submit_job = importlib.import_module(f"{PACKAGE}.api.default.submit_job")
        get_job = importlib.import_module(f"{PACKAGE}.api.default.get_job")
        get_result = importlib.import_module(f"{PACKAGE}.api.default.get_result")
        models = importlib.import_module(f"{PACKAGE}.models")
        types = importlib.import_module(f"{PACKAGE}.types")

        client = api.AuthenticatedClient(base_url=live_stack.url, token=stack_key)

        def body(**params):
            return models.SubmitJobBody(
                content=types.File(payload=io.BytesIO(images["content"]), file_name="content.png"),
                style=[types.File(payload=io.BytesIO(images["style"]), file_name="style.png")],
                params=models.JobParams(**params))

        submitted = submit_job.sync_detailed(client=client, body=body(size=32, iterations=2))
        assert submitted.status_code == 202, submitted.content
        job = submitted.parsed
        assert isinstance(job, models.JobOut) and job.params["size"] == 32
        deadline = time.monotonic() + 120
        while (job := get_job.sync(client=client, job_id=job.id)).status not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, job.status
            time.sleep(0.5)
        assert job.status == "succeeded", job.error
        result = get_result.sync(client=client, job_id=job.id)
        assert isinstance(result, types.File)
        assert Image.open(result.payload).size == (32, 24)

        # Prefer: wait, as generated: the finished job in one call
        waited = submit_job.sync_detailed(client=client, body=body(size=32, iterations=2), prefer="wait=60")
        assert waited.status_code == 201 and waited.parsed.status == "succeeded", waited.content
        assert waited.headers["Preference-Applied"] == "wait=60"
    finally:
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_images_come_as_the_generic_type_when_that_is_all_accept_asks_for(live_stack, stack_key, images):
    auth = {"Authorization": f"Bearer {stack_key}"}
    files = [("content", ("c.png", images["content"])), ("style", ("s.png", images["style"]))]
    job = httpx.post(f"{live_stack.url}/v1/jobs", headers=auth | {"Prefer": "wait=60"}, files=files,
                     data={"params": '{"size": 32, "iterations": 1, "output_format": "webp"}'}, timeout=90).json()
    assert job["status"] == "succeeded", job
    url = f"{live_stack.url}{job['result']['url']}"
    for accept, expected in ((None, "image/webp"), ("*/*", "image/webp"), ("image/*", "image/webp"),
                             ("application/octet-stream", "application/octet-stream"), ("text/html", "image/webp")):
        response = httpx.get(url, headers=auth | ({"Accept": accept} if accept else {}))
        assert response.status_code == 200 and response.headers["Content-Type"] == expected, (accept, response.headers)
        assert Image.open(io.BytesIO(response.content)).format == "WEBP"
