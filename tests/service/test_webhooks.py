"""Webhooks end to end: a real Celery worker (jobs and the maintenance queue, with the periodic
sweeps) on a private Redis, and a real receiver on loopback that verifies every signature with
the `standardwebhooks` verifier and can be told to fail or go down."""
from __future__ import annotations

import io
import json
import time

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import WebhookVerificationError

from api import create_app
from shared.models import WebhookEvent
from shared.services import Services
from tests.service.conftest import make_settings, new_key, submit, wait_for, wait_status
from tests.service.webhook_receiver import Receiver, Reply

TERMINAL = {"succeeded", "failed", "canceled"}
TINY = {"size": 32, "iterations": 2, "snapshot_every": 0}


@pytest.fixture(scope="module")
def wh_redis(make_redis):
    return make_redis()


@pytest.fixture(scope="module")
def wh_settings(database_url, wh_redis, storage_dir):
    return make_settings(database_url, wh_redis.url(0), storage_dir, webhook_allow_networks="127.0.0.0/8",
                         webhook_retry_schedule="1,1,1,1,1,1", webhook_timeout_seconds=5.0, sweep_seconds=1.0)


@pytest.fixture(scope="module")
def wh_worker(wh_settings, spawn_worker, tmp_path_factory):
    """Consumes `gpu` and `maintenance` and runs beat, like `atelier run`'s workers together."""
    schedule = tmp_path_factory.mktemp("beat") / "celerybeat-schedule"
    process = spawn_worker(wh_settings, ("-Q", "gpu,maintenance", "--beat", "--schedule", str(schedule)))
    yield process
    process.stop()


@pytest.fixture
def wh_client(wh_worker, wh_settings):
    app = create_app(wh_settings)
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["atelier"].db.dispose()


@pytest.fixture
def wh_auth(wh_settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(wh_settings)}"}


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.stop()


def secret(client, auth) -> str:
    response = client.get("/v1/webhooks/secret", headers=auth)
    assert response.status_code == 200
    return response.get_json()["secret"]


def deliveries(client, auth, job_id: str) -> list[dict]:
    response = client.get(f"/v1/jobs/{job_id}/deliveries", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def wait_delivery(client, auth, job_id: str, event: str, status: str, timeout: float = 60) -> dict:
    def found():
        return next((d for d in deliveries(client, auth, job_id) if d["event"] == event and d["status"] == status), None)
    return wait_for(found, timeout=timeout, interval=0.2, what=f"{event} delivery of {job_id} to be {status}")


def test_events_arrive_signed_with_the_job_as_get_shows_it(wh_client, wh_auth, images, receiver):
    key_secret = secret(wh_client, wh_auth)
    params = TINY | {"iterations": 4, "snapshot_every": 1, "webhook_url": receiver.url(),
                     "webhook_events": ["job.started", "job.snapshot", "job.succeeded"]}
    job_id = submit(wh_client, wh_auth, images, params).get_json()["id"]
    wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "delivered")
    job = wh_client.get(f"/v1/jobs/{job_id}", headers=wh_auth).get_json()
    assert job["status"] == "succeeded"
    payloads = [r.verify(key_secret) for r in receiver.requests()]
    types = [p["type"] for p in payloads]
    assert types[0] == "job.started" and types[-1] == "job.succeeded" and types.count("job.started") == 1
    assert "job.snapshot" in types and set(types) == {"job.started", "job.snapshot", "job.succeeded"}
    assert payloads[-1]["data"] == job  # the very JSON of GET /v1/jobs/{id}
    assert all(p["data"]["id"] == job_id and p["timestamp"].endswith("Z") for p in payloads)
    assert all(len(r.body) < 20_000 for r in receiver.requests())
    listed = deliveries(wh_client, wh_auth, job_id)
    assert [d["id"] for d in listed] == [r.id for r in receiver.requests()]  # webhook-id is the delivery id
    snapshot_times = [d["created_at"] for d in listed if d["event"] == "job.snapshot"]
    with Services(wh_client.application.extensions["atelier"].settings).db.session() as session:
        created = list(session.scalars(select(WebhookEvent.created_at).where(
            WebhookEvent.job_id == job_id, WebhookEvent.type == "job.snapshot").order_by(WebhookEvent.created_at)))
    assert len(created) == len(snapshot_times)
    assert all((b - a).total_seconds() >= 1 for a, b in zip(created, created[1:]))  # throttled: ≤ 1 per second


def submit_form(client, auth, images, params: dict, **fields: str):
    """A job whose webhook comes as multipart fields next to `params`."""
    data = {"content": (io.BytesIO(images["content"]), "c.png"), "style": (io.BytesIO(images["style"]), "s.png"),
            "params": json.dumps(params)} | fields
    return client.post("/v1/jobs", headers=auth, content_type="multipart/form-data", data=data)


def test_by_default_only_the_terminal_event_is_sent(wh_client, wh_auth, images, receiver):
    response = submit_form(wh_client, wh_auth, images, TINY | {"snapshot_every": 1}, webhook_url=receiver.url())
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "delivered")
    assert [r.verify(secret(wh_client, wh_auth))["type"] for r in receiver.requests()] == ["job.succeeded"]
