"""The jobs API without a worker: submission, idempotency, listing, tenancy, cancel and delete."""
from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from shared import lifecycle
from shared.params import Params, plan
from shared.services import Services
from shared.storage import input_key, sha256
from tests.service.helpers import bearer, new_key, stream_events, submit


def test_submit_answers_202_with_the_job_and_location(client, auth, images):
    response = submit(client, auth, images, {"size": 32, "iterations": 3, "output_format": "webp"})
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}" == job["urls"]["self"]
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["progress"] is None and job["result"] is None and job["error"] is None and job["snapshots"] == []
    # effective params: what was sent, plus every default filled in
    assert job["params"]["size"] == 32 and job["params"]["iterations"] == 3
    assert job["params"]["output_format"] == "webp" and job["params"]["style_weight"] == Params.style_weight
    assert client.get(job["urls"]["self"], headers=auth).get_json() == job


def test_engine_default_iterations_are_filled_in(client, auth, images):
    job = submit(client, auth, images, {"size": 64}).get_json()
    assert job["params"]["iterations"] == sum(stage.iterations for stage in plan(Params(size=64)))


def test_every_automatic_choice_is_resolved_in_the_effective_params(settings, auth, images, make_app):
    """What a job reports is what runs: at 256 px the schedule is two scales of 150 + 43 iterations,
    two styles blend equally, every style layer weighs the same; none of it comes back null."""
    client = make_app(replace(settings, max_size=256)).test_client()
    params = submit(client, auth, images, {"size": 256}, styles=("style", "style")).get_json()["params"]
    assert [stage.iterations for stage in plan(Params(size=256))] == [150, 43]
    assert params["scales"] == 2 and params["iterations"] == 193
    assert params["style_weights"] == [1.0, 1.0] and params["style_layer_weights"] == [1.0] * 5
    assert None not in params.values()


def test_inputs_are_stored_once_by_content(client, auth, images, settings):
    first = submit(client, auth, images, {"size": 32}).get_json()
    second = submit(client, auth, images, {"size": 48}, styles=("style", "style")).get_json()
    assert first["id"] != second["id"]
    path = Path(settings.storage_dir) / input_key(sha256(images["style"]))
    assert path.read_bytes() == images["style"]
    assert len(list(path.parent.iterdir())) == 1


def test_idempotency_key_returns_the_same_job(client, auth, images):
    headers = {"Idempotency-Key": "order-42"}
    first = submit(client, auth, images, {"size": 32}, headers=headers)
    again = submit(client, auth, images, {"size": 32}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(client.get("/v1/jobs", headers=auth).get_json()["data"]) == 1


def test_idempotency_key_with_a_different_body_is_rejected(client, auth, images):
    headers = {"Idempotency-Key": "order-43"}
    assert submit(client, auth, images, {"size": 32}, headers=headers).status_code == 202
    response = submit(client, auth, images, {"size": 48}, headers=headers)
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["field"] == "Idempotency-Key"


def test_idempotency_keys_are_per_account(client, auth, images, settings):
    headers = {"Idempotency-Key": "shared-key"}
    mine = submit(client, auth, images, {"size": 32}, headers=headers).get_json()
    other = bearer(new_key(settings))
    theirs = submit(client, other, images, {"size": 32}, headers=headers).get_json()
    assert mine["id"] != theirs["id"]


def test_without_idempotency_key_each_post_is_a_new_job(client, auth, images):
    a = submit(client, auth, images, {"size": 32}).get_json()
    b = submit(client, auth, images, {"size": 32}).get_json()
    assert a["id"] != b["id"]


def test_list_is_newest_first_and_cursor_paginated(client, auth, images):
    ids = [submit(client, auth, images, {"size": 32, "seed": i}).get_json()["id"] for i in range(5)]
    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/jobs?{query}", headers=auth).get_json()
        seen += [j["id"] for j in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == ids[::-1]


def test_list_filters_by_status(client, auth, images):
    keep = submit(client, auth, images, {"size": 32}).get_json()["id"]
    gone = submit(client, auth, images, {"size": 32}).get_json()["id"]
    client.post(f"/v1/jobs/{gone}/cancel", headers=auth)
    assert [j["id"] for j in client.get("/v1/jobs?status=queued", headers=auth).get_json()["data"]] == [keep]
    assert [j["id"] for j in client.get("/v1/jobs?status=canceled", headers=auth).get_json()["data"]] == [gone]


def test_another_accounts_job_is_404_everywhere(client, auth, images, settings):
    job = submit(client, auth, images, {"size": 32}).get_json()
    other = bearer(new_key(settings))
    for method, path in [("get", ""), ("post", "/cancel"), ("delete", ""), ("get", "/result"),
                         ("get", "/snapshots/1"), ("get", "/events")]:
        response = getattr(client, method)(f"/v1/jobs/{job['id']}{path}", headers=other)
        assert response.status_code == 404, (method, path)
        assert response.mimetype == "application/problem+json"
    assert client.get("/v1/jobs", headers=other).get_json()["data"] == []
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).get_json()["status"] == "queued"


def test_a_second_key_of_the_same_account_sees_its_jobs(client, auth, images, settings):
    name = "shared-account-" + auth["Authorization"][-6:]
    first = bearer(new_key(settings, name))
    second = bearer(new_key(settings, name))
    job = submit(client, first, images, {"size": 32}).get_json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=second).status_code == 200


def test_cancel_a_queued_job(client, auth, images):
    job = submit(client, auth, images, {"size": 32}).get_json()
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert response.status_code == 200
    canceled = response.get_json()
    assert canceled["status"] == "canceled" and canceled["finished_at"] is not None and canceled["started_at"] is None


def test_delete_removes_the_job_and_unshared_files(client, auth, images, settings):
    shared_style = submit(client, auth, images, {"size": 32}).get_json()
    unique = {**images, "content": images["style2"]}
    job = submit(client, auth, unique, {"size": 32}, styles=("style",)).get_json()
    response = client.delete(f"/v1/jobs/{job['id']}", headers=auth)
    assert response.status_code == 204 and response.data == b""
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth).status_code == 404
    root = Path(settings.storage_dir)
    assert not (root / input_key(sha256(images["style2"]))).exists()   # only that job used it
    assert (root / input_key(sha256(images["style"]))).exists()        # still used by the other job
    assert client.get(f"/v1/jobs/{shared_style['id']}", headers=auth).status_code == 200


@pytest.mark.parametrize("status", ["queued", "running"])
def test_deleting_a_job_ends_its_event_streams_with_a_deleted_event(client, auth, images, settings, status):
    """Before, the stream of a deleted job went on for ever: `queue` events with an invented place
    for a queued one, keep-alives for a running one; a client waiting on it hung."""
    job_id = submit(client, auth, images, {"size": 32}).get_json()["id"]
    if status == "running":  # a worker holds it
        services = Services(settings)
        with services.db.session() as session:
            assert lifecycle.claim(session, job_id, "gpu0@host", 60, 3)
        services.db.dispose()
    stream = stream_events(client.get(f"/v1/jobs/{job_id}/events", headers=auth, buffered=False), until=10)
    kind, data = next(stream)
    assert (kind, data["status"]) == ("status", status)
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 204
    assert list(stream)[-1] == ("deleted", {"id": job_id})  # and the stream ended, within 10 s


def test_result_is_404_until_there_is_one(client, auth, images):
    job = submit(client, auth, images, {"size": 32}).get_json()
    response = client.get(f"/v1/jobs/{job['id']}/result", headers=auth)
    assert response.status_code == 404 and "no result" in response.get_json()["detail"]
    assert client.get(f"/v1/jobs/{job['id']}/snapshots/1", headers=auth).status_code == 404


def test_multiple_styles_with_weights(client, auth, images):
    response = submit(client, auth, images, {"size": 32, "style_weights": [3, 1]}, styles=("style", "style2"))
    assert response.status_code == 202
    assert response.get_json()["params"]["style_weights"] == [3.0, 1.0]


def test_params_may_be_omitted(client, auth, images, settings):
    data = {"content": (io.BytesIO(images["content"]), "c.png"), "style": (io.BytesIO(images["style"]), "s.png")}
    job = client.post("/v1/jobs", data=data, headers=auth).get_json()
    assert job["params"]["snapshot_every"] == 50 and job["params"]["output_format"] == "png"
    assert json.dumps(job["params"])  # JSON-able, defaults only
