"""Tenancy: a key never reaches another account's jobs or deliveries (404, as if they did not exist),
a revoked key is refused (401), and keys are kept only as hashes.

The routes are enumerated from the app's url_map, so a new `/v1` route that takes an id is covered
(or makes this test fail until someone says how to fill its arguments)."""
from __future__ import annotations

import io
import uuid
from dataclasses import replace

import pytest
from PIL import Image
from sqlalchemy import MetaData, select, update

from api.app import create_app
from shared.models import ApiKey, Job, Snapshot, utcnow
from shared.storage import sha256
from tests.service.conftest import new_key, submit
from tests.service.test_errors import assert_problem

ID_ARGS = {"job_id", "delivery_id", "iteration"}   # what a /v1 route may take; anything else fails the test
IGNORED_METHODS = {"HEAD", "OPTIONS"}
PUBLIC = {"/v1/openapi.json"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def v1_rules(app):
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/v1")]
    assert rules, "no /v1 routes?"
    return rules


@pytest.fixture
def tenancy_app(settings):
    # webhooks to 127.0.0.1 are allowed here so a job can have a delivery; no worker runs (database 1)
    app = create_app(replace(settings, webhook_allow_networks="127.0.0.0/8"))
    app.config["TESTING"] = True
    yield app
    app.extensions["atelier"].db.dispose()


def png_bytes(size=(20, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def owned(tenancy_app, settings, images):
    """An account's finished job with a result, a snapshot and a webhook delivery, and a queued job."""
    client, svc = tenancy_app.test_client(), tenancy_app.extensions["atelier"]
    owner = new_key(settings)
    data = {"content": (io.BytesIO(images["content"]), "c.png"), "style": (io.BytesIO(images["style"]), "s.png"),
            "params": '{"size": 32, "iterations": 2}', "webhook_url": "http://127.0.0.1:9/hook",
            "webhook_events": "job.canceled"}
    response = client.post("/v1/jobs", data=data, headers=bearer(owner), content_type="multipart/form-data")
    assert response.status_code == 202, response.get_data(as_text=True)
    done = response.get_json()["id"]
    assert client.post(f"/v1/jobs/{done}/cancel", headers=bearer(owner)).status_code == 200
    # give it a stored result and snapshot, as a worker would have
    image = png_bytes()
    svc.storage.put(f"jobs/{done}/result.png", image)
    svc.storage.put(f"jobs/{done}/snapshots/1.png", image)
    with svc.db.session() as session:
        session.execute(update(Job).where(Job.id == done).values(
            result_key=f"jobs/{done}/result.png", result_sha256=sha256(image), result_width=20, result_height=10))
        session.add(Snapshot(job_id=done, iteration=1, key=f"jobs/{done}/snapshots/1.png", sha256=sha256(image)))
        session.commit()
    deliveries = client.get(f"/v1/jobs/{done}/deliveries", headers=bearer(owner)).get_json()["data"]
    assert deliveries, "the canceled job should have a webhook delivery"
    queued = submit(client, bearer(owner), images, {"size": 32, "iterations": 2}).get_json()["id"]
    return {"owner": owner, "done": done, "queued": queued, "delivery": deliveries[0]["id"]}


def fill(rule, owned: dict, job: str) -> str:
    unknown = set(rule.arguments) - ID_ARGS
    assert not unknown, f"{rule.rule}: teach test_tenancy how to fill {unknown}"
    values = {"job_id": owned[job], "delivery_id": owned["delivery"], "iteration": 1}
    return rule.build({a: values[a] for a in rule.arguments}, append_unknown=False)[1]


def test_another_accounts_ids_are_404_on_every_v1_route(tenancy_app, settings, owned):
    client = tenancy_app.test_client()
    intruder = bearer(new_key(settings))
    with_ids = [r for r in v1_rules(tenancy_app) if r.arguments]
    # the routes we know of today must be among them (a renamed argument would hide one)
    paths = {r.rule for r in with_ids}
    assert {"/v1/jobs/<job_id>", "/v1/jobs/<job_id>/result", "/v1/jobs/<job_id>/events",
            "/v1/jobs/<job_id>/deliveries", "/v1/deliveries/<delivery_id>/redeliver"} <= paths, paths
    tried = 0
    for rule in with_ids:
        for method in sorted(rule.methods - IGNORED_METHODS):
            for job in ("done", "queued"):
                url = fill(rule, owned, job)
                response = client.open(url, method=method, headers=intruder)
                assert_problem(response, 404)
                assert owned[job] not in response.get_data(as_text=True) or "no job" in response.get_json()["detail"]
                tried += 1
    assert tried >= 2 * len(with_ids)

    # nothing happened to the owner's jobs: they are there, unchanged, and readable by the owner
    owner = bearer(owned["owner"])
    assert client.get(f"/v1/jobs/{owned['queued']}", headers=owner).get_json()["status"] == "queued"
    for rule in with_ids:
        if "GET" in rule.methods:
            response = client.get(fill(rule, owned, "done"), headers=owner, buffered=False)
            assert response.status_code == 200, (rule.rule, response.get_data(as_text=True))
            response.close()
    # a delivery is reachable by its owner (202: sent again)
    assert client.post(f"/v1/deliveries/{owned['delivery']}/redeliver", headers=owner).status_code == 202


def test_lists_show_only_the_callers_jobs(tenancy_app, settings, owned):
    client = tenancy_app.test_client()
    intruder = bearer(new_key(settings))
    assert client.get("/v1/jobs", headers=intruder).get_json()["data"] == []
    ids = {j["id"] for j in client.get("/v1/jobs", headers=bearer(owned["owner"])).get_json()["data"]}
    assert {owned["done"], owned["queued"]} <= ids


def test_a_revoked_key_is_401_everywhere(tenancy_app, settings, owned):
    client, svc = tenancy_app.test_client(), tenancy_app.extensions["atelier"]
    token = owned["owner"]
    from shared.keys import hash_key
    with svc.db.session() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(token)).values(revoked_at=utcnow()))
        session.commit()
    checked = 0
    for rule in v1_rules(tenancy_app):
        if rule.rule in PUBLIC:
            continue
        for method in sorted(rule.methods - IGNORED_METHODS):
            response = client.open(fill(rule, owned, "done"), method=method, headers=bearer(token))
            assert_problem(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= 8
    # the job is still there (revoking a key keeps its account's jobs) and the service is healthy
    with svc.db.session() as session:
        assert session.get(Job, owned["queued"]).status == "queued"
    assert client.get("/healthz").status_code == 200


def test_keys_are_stored_only_as_hashes(tenancy_app, settings):
    svc = tenancy_app.extensions["atelier"]
    account = f"hash-{uuid.uuid4().hex[:8]}"
    tokens = [new_key(settings, account) for _ in range(2)]
    secret_part = [t[len("atl_") + 6:] for t in tokens]   # the part past the human-readable prefix
    metadata = MetaData()
    metadata.reflect(svc.db.engine)
    rows = 0
    with svc.db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                rows += 1
                for value in row:
                    text = str(value)
                    for token, secret in zip(tokens, secret_part):
                        assert token not in text and secret not in text, f"plaintext key in {table.name}"
    assert rows > 0
    from shared.keys import hash_key
    with svc.db.session() as session:
        stored = set(session.scalars(select(ApiKey.key_hash)))
    assert {hash_key(t) for t in tokens} <= stored
