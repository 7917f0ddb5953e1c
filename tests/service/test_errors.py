"""Every client mistake is a 4xx RFC 9457 problem naming what is wrong, never a 500."""
from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
from PIL import Image

from api.app import create_app
from tests.service.conftest import submit

PROBLEM = "application/problem+json"


def assert_problem(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["status"] == status and body["title"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
        assert field in body["detail"]
    return body


@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwYXNz", "Bearer ", "Bearer atl_not-a-key"])
def test_401_without_a_valid_key(client, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/v1/jobs", headers=headers)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_404_unknown_job_and_route(client, auth):
    assert_problem(client.get("/v1/jobs/nope", headers=auth), 404)
    assert_problem(client.get("/v1/nothing-here", headers=auth), 404)


def test_405_is_a_problem_with_allow(client, auth):
    response = client.put("/v1/jobs", headers=auth)
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_415_for_a_json_body(client, auth):
    response = client.post("/v1/jobs", json={"content": "x"}, headers=auth)
    assert_problem(response, 415)


def test_413_over_the_upload_limit(client, auth, settings, images):
    big = {"content": io.BytesIO(b"\0" * (settings.max_upload_bytes + 1)), "style": io.BytesIO(images["style"])}
    response = client.post("/v1/jobs", data=big, headers=auth, content_type="multipart/form-data")
    assert_problem(response, 413)


def test_400_params_not_json(client, auth, images):
    data = {"content": (io.BytesIO(images["content"]), "c.png"), "style": (io.BytesIO(images["style"]), "s.png"),
            "params": "{size: 32"}
    assert_problem(client.post("/v1/jobs", data=data, headers=auth), 400, "params")


def test_400_params_not_an_object(client, auth, images):
    data = {"content": (io.BytesIO(images["content"]), "c.png"), "style": (io.BytesIO(images["style"]), "s.png"),
            "params": "[1, 2]"}
    assert_problem(client.post("/v1/jobs", data=data, headers=auth), 400, "params")


@pytest.mark.parametrize("params, field", [
    ({"colour": "blue"}, "params.colour"),                        # unknown key
    ({"size": 4096}, "params.size"),                              # over the operator's max size
    ({"size": 8}, "params.size"),                                 # under the engine's minimum
    ({"size": "big"}, "params.size"),                             # wrong type
    ({"size": True}, "params.size"),                              # bool is not an int
    ({"iterations": 5000}, "params.iterations"),                  # over the operator's max iterations
    ({"iterations": 0}, "params.iterations"),
    ({"style_scale": 9}, "params.style_scale"),
    ({"optimizer": "sgd"}, "params.optimizer"),
    ({"init": "/etc/passwd"}, "params.init"),                     # image paths are CLI-only
    ({"output_format": "gif"}, "params.output_format"),
    ({"snapshot_every": -1}, "params.snapshot_every"),
    ({"style_weights": [1, 2]}, "params.style_weights"),          # two weights, one style
    ({"content_weight": 0, "style_weight": 0}, "params.style_weight"),  # the engine's own cross-check
])
def test_422_bad_params(client, auth, images, params, field):
    assert_problem(submit(client, auth, images, params), 422, field)


def test_422_default_iterations_over_a_low_operator_limit(auth, images, settings):
    client = create_app(replace(settings, max_iterations=10)).test_client()
    assert_problem(submit(client, auth, images, {"size": 64}), 422, "params.iterations")


def test_default_size_is_capped_by_the_operator_limit(client, auth, images, settings):
    job = submit(client, auth, images, {"iterations": 2}).get_json()
    assert job["params"]["size"] == settings.max_size


@pytest.mark.parametrize("payload, field", [
    (b"not an image at all", "content"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "content"),   # truncated PNG
    (b"", "content"),
])
def test_422_bad_content_image(client, auth, images, payload, field):
    data = {"content": (io.BytesIO(payload), "c.png"), "style": (io.BytesIO(images["style"]), "s.png")}
    assert_problem(client.post("/v1/jobs", data=data, headers=auth), 422, field)


def test_422_bad_second_style_is_named(client, auth, images):
    data = {"content": (io.BytesIO(images["content"]), "c.png"),
            "style": [(io.BytesIO(images["style"]), "s.png"), (io.BytesIO(images["content"][:60]), "t.png")]}
    assert_problem(client.post("/v1/jobs", data=data, headers=auth), 422, "style[1]")


def test_422_image_over_the_pixel_limit(client, auth, images, settings):
    # a 1100x1000 PNG is 1.1 MP, over the 1 MP test limit, and still small on the wire
    buffer = io.BytesIO()
    Image.new("RGB", (1100, 1000)).save(buffer, "PNG")
    data = {"content": (io.BytesIO(buffer.getvalue()), "c.png"), "style": (io.BytesIO(images["style"]), "s.png")}
    body = assert_problem(client.post("/v1/jobs", data=data, headers=auth), 422, "content")
    assert "limit" in body["detail"]


def test_422_missing_files_and_unknown_fields(client, auth, images):
    only_style = {"style": (io.BytesIO(images["style"]), "s.png")}
    assert_problem(client.post("/v1/jobs", data=only_style, headers=auth), 422, "content")
    only_content = {"content": (io.BytesIO(images["content"]), "c.png")}
    assert_problem(client.post("/v1/jobs", data=only_content, headers=auth), 422, "style")
    extra = {"content": (io.BytesIO(images["content"]), "c.png"), "style": (io.BytesIO(images["style"]), "s.png"),
             "mask": (io.BytesIO(images["style"]), "m.png")}
    assert_problem(client.post("/v1/jobs", data=extra, headers=auth), 422, "mask")


def test_422_too_many_styles(client, auth, images, settings):
    data = {"content": (io.BytesIO(images["content"]), "c.png"),
            "style": [(io.BytesIO(images["style"]), f"s{i}.png") for i in range(settings.max_styles + 1)]}
    assert_problem(client.post("/v1/jobs", data=data, headers=auth), 422, "style")


@pytest.mark.parametrize("query, field", [("status=done", "status"), ("limit=0", "limit"), ("limit=x", "limit"),
                                          ("limit=1000", "limit"), ("cursor=%%%", "cursor"), ("cursor=bm9wZQ", "cursor")])
def test_400_bad_list_query(client, auth, query, field):
    assert_problem(client.get(f"/v1/jobs?{query}", headers=auth), 400, field)


def test_429_too_many_active_jobs(client, auth, images, settings):
    for _ in range(settings.max_active_jobs):
        assert submit(client, auth, images, {"size": 32, "iterations": 2}).status_code == 202
    response = submit(client, auth, images, {"size": 32, "iterations": 2})
    assert_problem(response, 429)
    assert int(response.headers["Retry-After"]) > 0


def test_409_cancel_a_finished_job(client, auth, images):
    job = submit(client, auth, images, {"size": 32}).get_json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 200
    assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth), 409)


def test_400_bad_idempotency_key(client, auth, images):
    response = submit(client, auth, images, headers={"Idempotency-Key": "x" * 300})
    assert_problem(response, 400, "Idempotency-Key")


def test_500_is_a_problem_too(auth, settings, tmp_path):
    # a server fault (here: a database nobody migrated) still answers problem+json, without details
    client = create_app(replace(settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}")).test_client()
    response = client.get("/v1/jobs", headers=auth)
    assert response.status_code == 500 and response.mimetype == PROBLEM
    body = json.loads(response.get_data())
    assert body["title"] == "Internal Server Error" and "sqlite" not in body["detail"].lower()
