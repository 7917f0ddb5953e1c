"""Schemathesis against `/v1/openapi.json`: for every operation, generated requests (valid and
invalid, with a valid API key, against random and real ids) never get a 5xx, and every response
conforms to the document (status code, content type, body schema).

Bounded: FUZZ_EXAMPLES examples per operation and mode (environment `ATELIER_FUZZ_EXAMPLES`
raises it for a longer run), no example database, no shrinking of passing runs."""
from __future__ import annotations

import io
import os
from dataclasses import replace

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis.errors import Unsatisfiable
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from api.app import create_app
from tests.service.conftest import new_key

FUZZ_EXAMPLES = int(os.environ.get("ATELIER_FUZZ_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def fuzz_app(settings):
    # limits out of the way, so the fuzzer reaches the handlers (429 itself is covered by test_abuse);
    # a `Prefer: wait` holds a request at most a moment (no worker ends these jobs)
    app = create_app(replace(settings, submit_rate_limit="100000/minute", max_active_jobs=10**6, max_prefer_wait_seconds=1,
                             max_active_jobs_per_key=10**6))
    app.config["TESTING"] = True
    yield app
    app.extensions["atelier"].db.dispose()


def ended_job(client, auth, images) -> str:
    """A real job of this key that has ended (so its event stream ends at once)."""
    data = {"content": (io.BytesIO(images["content"]), "c.png"), "style": (io.BytesIO(images["style"]), "s.png"),
            "params": '{"size": 32, "iterations": 2}'}
    job = client.post("/v1/jobs", data=data, headers=auth, content_type="multipart/form-data").get_json()["id"]
    assert client.post(f"/v1/jobs/{job}/cancel", headers=auth).status_code == 200
    return job


def fuzz(operation, auth: dict, mode: GenerationMode, path_parameters: dict | None = None) -> int:
    strategy = operation.as_strategy(generation_mode=mode, headers=auth, path_parameters=path_parameters)
    calls = []

    @hypothesis_settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=False,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        response = case.call(headers=auth)
        calls.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        # negative mode needs something to break: an operation whose only input is an unconstrained
        # string (or nothing) has nothing invalid to send
        if mode is GenerationMode.POSITIVE:
            raise AssertionError(f"{operation.label}: no {mode.value} examples could be generated") from None
    return len(calls)


def test_schemathesis_finds_no_server_errors_and_no_schema_violations(fuzz_app, settings, images):
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", fuzz_app)
    client = fuzz_app.test_client()
    auth = {"Authorization": f"Bearer {new_key(settings)}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    total = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            total += fuzz(operation, auth, mode)
        names = {p.name for p in operation.path_parameters}
        if "job_id" in names:  # the same against one of the caller's real jobs
            total += fuzz(operation, auth, GenerationMode.POSITIVE, {"job_id": ended_job(client, auth, images)})
    assert total >= len(operations) * 2
    # healthy after, and a good request still works
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/jobs", headers=auth).status_code == 200
