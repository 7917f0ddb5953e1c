"""Webhooks end to end: a real Celery worker (jobs and the maintenance queue, with the periodic
sweeps) on a private Redis, and a real receiver on loopback that verifies every signature with
the `standardwebhooks` verifier and can be told to fail or go down."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update
from standardwebhooks.webhooks import WebhookVerificationError

from api.app import create_app
from shared import keys
from shared.broker import create_celery
from shared.models import Job, Snapshot, WebhookEvent, utcnow
from shared.services import Services
from shared.webhooks import outbox, signing
from tests.service import faults
from tests.service.helpers import ROOT, bearer, make_settings, new_key, submit, wait_for
from tests.service.webhook_receiver import Reply

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
def wh_client(wh_worker, wh_settings, make_app):
    return make_app(wh_settings).test_client()


@pytest.fixture
def wh_auth(wh_settings) -> dict[str, str]:
    return bearer(new_key(wh_settings))


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


def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt_with_the_same_id(
        wh_client, wh_auth, images, receiver):
    # a redirect is not followed (and counts as a failure); a 503's Retry-After is honoured
    receiver.reply(Reply(302, {"Location": receiver.url("/elsewhere")}), Reply(503, {"Retry-After": "2"}))
    job_id = submit(wh_client, wh_auth, images, TINY | {"webhook_url": receiver.url()}).get_json()["id"]
    delivered = wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "delivered")
    assert [a["status_code"] for a in delivered["attempts"]] == [302, 503, 200]
    assert [a["number"] for a in delivered["attempts"]] == [1, 2, 3]
    requests = receiver.requests()
    assert len(requests) == 3 and {r.id for r in requests} == {delivered["id"]}
    assert receiver.requests("/elsewhere") == []
    key_secret = secret(wh_client, wh_auth)
    assert all(r.verify(key_secret)["type"] == "job.succeeded" for r in requests)
    assert len({r.body for r in requests}) == 1  # the same event, byte for byte
    second, third = (datetime.fromisoformat(a["started_at"]) for a in delivered["attempts"][1:])
    assert (third - second).total_seconds() >= 2  # Retry-After: 2 beat the 1 s schedule


def test_410_gone_stops_the_retries(wh_client, wh_auth, images, receiver):
    receiver.reply(Reply(410))
    job_id = submit(wh_client, wh_auth, images, TINY | {"webhook_url": receiver.url()}).get_json()["id"]
    failed = wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "failed")
    assert [a["status_code"] for a in failed["attempts"]] == [410] and failed["next_attempt_at"] is None
    time.sleep(3)  # three retry delays of the 1 s schedule: nothing more may arrive
    assert len(receiver.requests()) == 1
    assert len(deliveries(wh_client, wh_auth, job_id)[0]["attempts"]) == 1


def test_a_receiver_answering_nul_bytes_has_its_delivery_recorded(wh_client, wh_auth, images, receiver):
    """PostgreSQL text refuses NUL: the excerpt was stored as received, the attempt's record failed,
    and the event stayed leased and unrecorded, sent again by every sweep. Now stored without them."""
    receiver.reply(Reply(200, body=b"o\x00k"))
    job_id = submit(wh_client, wh_auth, images, TINY | {"webhook_url": receiver.url()}).get_json()["id"]
    delivered = wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "delivered", timeout=30)
    [attempt] = delivered["attempts"]
    assert attempt["status_code"] == 200 and attempt["response_excerpt"] == "ok"
    assert len(receiver.requests()) == 1


def test_a_retry_after_of_a_non_ascii_digit_is_a_failed_attempt_retried_on_the_schedule(
        wh_client, wh_auth, images, receiver):
    """Retry-After: the byte 0xB2 reads as '²', a digit to str.isdigit() that float() refuses: the
    sender raised before recording the attempt, leaving the event leased and unrecorded."""
    receiver.reply(Reply(503, {"Retry-After": "\xb2"}), Reply(429, {"Retry-After": "\xb2"}))
    job_id = submit(wh_client, wh_auth, images, TINY | {"webhook_url": receiver.url()}).get_json()["id"]
    delivered = wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "delivered", timeout=30)
    assert [a["status_code"] for a in delivered["attempts"]] == [503, 429, 200]
    started = [datetime.fromisoformat(a["started_at"]) for a in delivered["attempts"]]
    assert all((b - a).total_seconds() >= 0.9 for a, b in zip(started, started[1:]))  # the 1 s schedule, ±10%
    assert len(receiver.requests()) == 3


def test_a_receiver_that_keeps_failing_gets_the_whole_schedule_then_the_delivery_fails(
        wh_client, wh_auth, images, receiver):
    receiver.reply(*[Reply(500)] * 10)
    job_id = submit(wh_client, wh_auth, images, TINY | {"webhook_url": receiver.url()}).get_json()["id"]
    failed = wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "failed")
    assert [a["status_code"] for a in failed["attempts"]] == [500] * 7  # the first attempt and six retries
    assert failed["next_attempt_at"] is None


def test_a_receiver_down_while_redis_restarts_still_gets_its_event(wh_client, wh_auth, wh_redis, images, receiver):
    job_id = submit(wh_client, wh_auth, images, TINY | {"webhook_url": receiver.url()}).get_json()["id"]
    wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "delivered")
    faults.stop_receiver(receiver)
    faults.stop_redis(wh_redis)
    try:
        # while Redis is down: a job is submitted (it cannot be sent) and canceled, which is an event
        queued = submit(wh_client, wh_auth, images, TINY | {"webhook_url": receiver.url()})
        assert queued.status_code == 202
        canceled = wh_client.post(f"/v1/jobs/{queued.get_json()['id']}/cancel", headers=wh_auth)
        assert canceled.get_json()["status"] == "canceled"
        [pending] = deliveries(wh_client, wh_auth, queued.get_json()["id"])
        assert pending["event"] == "job.canceled" and pending["status"] == "pending"  # in SQL, not lost
    finally:
        faults.start_redis(wh_redis)
    # Redis is back, the receiver still down: attempts fail, and are retried
    wait_for(lambda: deliveries(wh_client, wh_auth, queued.get_json()["id"])[0]["attempts"], timeout=90,
             what="a first attempt once Redis is back")
    faults.start_receiver(receiver)
    delivered = wait_delivery(wh_client, wh_auth, queued.get_json()["id"], "job.canceled", "delivered", timeout=90)
    assert delivered["attempts"][0]["status_code"] is None and delivered["attempts"][-1]["status_code"] == 200
    [request] = receiver.requests()[1:]
    payload = request.verify(secret(wh_client, wh_auth))
    assert payload["type"] == "job.canceled" and payload["data"]["id"] == queued.get_json()["id"]


def test_rotation_keeps_deliveries_verifiable_with_the_old_and_the_new_secret(wh_client, wh_auth, images, receiver):
    old = secret(wh_client, wh_auth)
    assert old.startswith("whsec_") and secret(wh_client, wh_auth) == old
    rotated = wh_client.post("/v1/webhooks/secret/rotate", headers=wh_auth).get_json()
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old and rotated["previous_expires_at"] is not None
    assert secret(wh_client, wh_auth) == new
    job_id = submit(wh_client, wh_auth, images, TINY | {"webhook_url": receiver.url()}).get_json()["id"]
    wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "delivered")
    [request] = receiver.requests()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert request.verify(old) == request.verify(new)
    with pytest.raises(WebhookVerificationError):
        request.verify("whsec_" + base64.b64encode(b"x" * 32).decode())


def test_a_rotated_out_secret_stops_signing_after_its_grace(settings, api_key):
    services = Services(settings)
    with services.db.session() as session:
        key_id = keys.live_key(session, api_key).id
        old = signing.current(session, key_id).secret
        new = signing.rotate(session, key_id, grace_seconds=3600).secret
        assert signing.secrets_for(session, key_id) == [new, old]
        newest = signing.rotate(session, key_id, grace_seconds=0).secret
        assert signing.secrets_for(session, key_id) == [newest]
        assert signing.current(session, key_id).previous_expires_at is None
    services.db.dispose()


def test_a_revoked_keys_secret_signs_nothing_more(wh_client, wh_settings, images, receiver):
    """A key is revoked (it leaked, say: its secret was printed with it) while a delivery for a job
    it submitted waits for its retry. Before the fix the retry went out signed with the revoked
    key's secret and was delivered (this test failed so); now the delivery fails, saying why,
    nothing more reaches the receiver, and the key's stored secrets are wiped."""
    account = f"revoked-{uuid.uuid4().hex[:6]}"
    token, other = new_key(wh_settings, account), new_key(wh_settings, account)
    auth, other_auth = {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {other}"}
    receiver.reply(Reply(503, {"Retry-After": "5"}))
    job_id = submit(wh_client, auth, images, TINY | {"webhook_url": receiver.url()}).get_json()["id"]
    wait_for(lambda: (d := deliveries(wh_client, other_auth, job_id)) and d[0]["attempts"], timeout=60,
             what="the first attempt")
    services = Services(wh_settings)
    with services.db.session() as session:
        key_id = keys.live_key(session, token).id
        assert keys.revoke(session, key_id)
    failed = wait_delivery(wh_client, other_auth, job_id, "job.succeeded", "failed", timeout=60)
    assert [a["status_code"] for a in failed["attempts"]] == [503, None]
    assert "revoked" in failed["attempts"][-1]["error"] and failed["next_attempt_at"] is None
    assert len(receiver.requests()) == 1  # the attempt before the revocation, and nothing since
    with services.db.session() as session:
        assert session.get(keys.ApiKey, key_id).webhook_secret is None
        assert signing.secrets_for(session, key_id) == []
    services.db.dispose()


def test_deliveries_are_listed_and_redelivered_only_for_their_owner(wh_client, wh_auth, wh_settings, images, receiver):
    job_id = submit(wh_client, wh_auth, images, TINY | {"webhook_url": receiver.url()}).get_json()["id"]
    first = wait_delivery(wh_client, wh_auth, job_id, "job.succeeded", "delivered")
    assert first["url"] == receiver.url() and first["job_id"] == job_id
    [attempt] = first["attempts"]
    assert attempt["status_code"] == 200 and attempt["response_excerpt"] == "ok" and attempt["latency_ms"] >= 0
    other = bearer(new_key(wh_settings))
    assert wh_client.get(f"/v1/jobs/{job_id}/deliveries", headers=other).status_code == 404
    refused = wh_client.post(f"/v1/deliveries/{first['id']}/redeliver", headers=other)
    assert refused.status_code == 404 and refused.mimetype == "application/problem+json"
    assert wh_client.post("/v1/deliveries/msg_nope/redeliver", headers=wh_auth).status_code == 404
    again = wh_client.post(f"/v1/deliveries/{first['id']}/redeliver", headers=wh_auth)
    assert again.status_code == 202 and again.get_json()["id"] == first["id"]
    wait_for(lambda: len(receiver.requests()) == 2, what="the redelivery")
    assert {r.id for r in receiver.requests()} == {first["id"]}
    # the receiver can answer before the sender has logged the attempt and then the delivery's
    # status (two writes; a full run once read between them): poll until both are
    redelivered = wait_for(lambda: next((d for d in deliveries(wh_client, wh_auth, job_id)
                                         if len(d["attempts"]) == 2 and d["status"] != "pending"), None),
                           what="the redelivery's log")
    assert redelivered["status"] == "delivered" and [a["number"] for a in redelivered["attempts"]] == [1, 2]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.0.0.7/hook", "http://169.254.169.254/latest/meta-data",
    "http://[::1]/hook", "http://[::ffff:192.168.0.1]/hook", "http://0.0.0.0/", "ftp://example.com/hook",
    "not a url", "http://user:secret@example.com/hook", "http:///hook",
])
def test_private_and_malformed_webhook_urls_are_refused_at_submission(client, auth, images, url):
    """No ATELIER_WEBHOOK_ALLOW_NETWORKS here: loopback is refused like any private address."""
    for response, field in ((submit(client, auth, images, TINY | {"webhook_url": url}), "params.webhook_url"),
                            (submit_form(client, auth, images, TINY, webhook_url=url), "webhook_url")):
        assert response.status_code == 422 and response.mimetype == "application/problem+json"
        assert response.get_json()["errors"][0]["field"] == field
    assert client.get("/v1/jobs", headers=auth).get_json()["data"] == []


@pytest.mark.parametrize("fields, field", [
    ({"webhook_events": "job.succeeded"}, "webhook_url"),
    ({"webhook_url": "http://127.0.0.1/h", "webhook_events": "job.finished"}, "webhook_events"),
    ({"webhook_url": "http://127.0.0.1/h", "webhook_events": " , "}, "webhook_events"),
])
def test_bad_webhook_fields_are_named(wh_settings, client_for, images, fields, field):
    client, auth = client_for(wh_settings)  # allows 127.0.0.0/8, so only the named field is wrong
    response = submit_form(client, auth, images, TINY, **fields)
    assert response.status_code == 422 and response.get_json()["errors"][0]["field"] == field
    in_params = submit(client, auth, images, TINY | {"webhook_url": "http://127.0.0.1/h", "webhook_events": []})
    assert in_params.status_code == 422 and in_params.get_json()["errors"][0]["field"] == "params.webhook_events"
    twice = submit_form(client, auth, images, TINY | {"webhook_url": "http://127.0.0.1/h"}, webhook_url="http://127.0.0.1/h")
    assert twice.status_code == 422 and twice.get_json()["errors"][0]["field"] == "webhook_url"


def test_the_sweep_records_the_end_of_a_job_whose_event_was_never_recorded(settings, own_database, client_for,
                                                                           images):
    """The process that ended the job died before recording its event: the sweep records it. (In a
    database of its own: `wh_worker`'s beat sweeps the shared one every second, and once recorded
    and sent this job's event first.)"""
    settings = replace(settings, webhook_allow_networks="127.0.0.0/8", database_url=own_database)
    client, auth = client_for(settings)
    job_id = submit(client, auth, images, TINY | {"webhook_url": "http://127.0.0.1/h"}).get_json()["id"]
    services = Services(settings)
    with services.db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            status="failed", error_code="engine_error", error_message="boom",
            finished_at=utcnow() - timedelta(minutes=2)))
        session.commit()
    celery = create_celery(settings)  # Redis database 1: nobody consumes it, so the event stays pending
    sent = outbox.sweep(services, celery)
    with services.db.session() as session:
        [event] = session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)).all()
        assert event.type == "job.failed" and event.id in sent
        assert json.loads(event.payload)["data"] == client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
        outbox.sweep(services, celery)  # recorded once, not at every sweep
        # a second recorder that raced the first one past every check (another sweep, a beat worker's
        # sweep, the worker itself) makes no second row: the unique index of revision 0007
        assert outbox.record(session, session.get(Job, job_id), "job.failed") is None
        assert len(session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)).all()) == 1
    services.db.dispose()


def test_keys_create_prints_the_webhook_secret_before_the_key(settings, client):
    result = subprocess.run([sys.executable, "-m", "shared.cli", "keys", "create", f"cli-{uuid.uuid4().hex[:6]}"],
                            env=os.environ | settings.to_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    token, [printed] = lines[-1], [line for line in lines[:-1] if line.startswith("whsec_")]
    assert secret(client, bearer(token)) == printed


def test_the_openapi_document_describes_webhooks(client):
    spec = client.get("/v1/openapi.json").get_json()
    assert {"/v1/webhooks/secret", "/v1/webhooks/secret/rotate", "/v1/jobs/{job_id}/deliveries",
            "/v1/deliveries/{delivery_id}/redeliver"} <= set(spec["paths"])
    assert spec["webhooks"]["jobEvent"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WebhookPayload"}
    assert spec["components"]["schemas"]["WebhookPayload"]["properties"]["type"]["enum"] == list(outbox.EVENT_TYPES)


def test_a_payload_stays_under_20_kb_keeping_the_newest_snapshots():
    now = utcnow()
    job = Job(id="j" * 36, status="succeeded", params={"size": 32}, created_at=now, attempts=1, snapshots=[
        Snapshot(iteration=i, key=f"k{i}", sha256="0" * 64, created_at=now) for i in range(1, 2001)])
    body = outbox.payload("job.succeeded", job)
    assert len(body.encode()) < 20_000
    snapshots = json.loads(body)["data"]["snapshots"]
    assert 0 < len(snapshots) < 2000 and snapshots[-1]["iteration"] == 2000
    assert [s["iteration"] for s in snapshots] == list(range(2001 - len(snapshots), 2001))


@pytest.mark.parametrize("setting", [{"webhook_allow_networks": "127.0.0.0/8,localhost"},
                                     {"webhook_retry_schedule": "5,later"}])
def test_a_malformed_webhook_setting_stops_the_api_at_start_up(settings, setting):
    with pytest.raises(ValueError, match="ATELIER_WEBHOOK_"):
        create_app(replace(settings, **setting))
