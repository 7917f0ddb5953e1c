"""`Prefer: wait=N` on `POST /v1/jobs` (RFC 7240, as Replicate has it): the request is held on the
job's Redis channel until the job ends (201 with the ended job) or N seconds pass (202, as
without it), N capped by ATELIER_MAX_PREFER_WAIT_SECONDS."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

from tests.service.helpers import submit, wait_for

TINY = {"size": 32, "iterations": 2}


def test_a_job_that_ends_within_the_wait_is_answered_201_ended(live_client, live_auth, images):
    response = submit(live_client, live_auth, images, TINY, headers={"Prefer": "wait=60"})
    assert response.status_code == 201, response.get_json()
    job = response.get_json()
    assert job["status"] == "succeeded" and job["result"]["url"]
    assert response.headers["Preference-Applied"] == "wait=60"
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    # the same Idempotency-Key again: the same ended job, at once
    key = {"Idempotency-Key": "prefer-1"}
    first = submit(live_client, live_auth, images, TINY, headers={"Prefer": "wait=60"} | key)
    again = submit(live_client, live_auth, images, TINY, headers={"Prefer": "wait=60"} | key)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()


def test_a_job_still_queued_when_the_wait_runs_out_is_answered_202(client, auth, images):
    started = time.monotonic()
    response = submit(client, auth, images, TINY, headers={"Prefer": "respond-async, wait=1"})  # no worker here
    held = time.monotonic() - started
    assert 5 > held >= 1  # the request was held for the wait, and let go when it ran out
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=1"


def test_a_job_deleted_during_the_wait_is_answered_202_as_created(client, auth, images):
    """Before, the job was read again after the wait and the submission answered 404, as if it had
    made nothing. Now: the job as created, and where it was; the deletion ends the wait at once."""
    other = client.application.test_client()  # deletes it from another thread, as another request would

    def delete_once_listed() -> None:
        listed = wait_for(lambda: other.get("/v1/jobs", headers=auth).get_json()["data"], what="the job")
        assert other.delete(f"/v1/jobs/{listed[0]['id']}", headers=auth).status_code == 204

    deleter = threading.Thread(target=delete_once_listed)
    deleter.start()
    started = time.monotonic()
    response = submit(client, auth, images, TINY, headers={"Prefer": "wait=30"})  # no worker here
    deleter.join()
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["status"] == "queued" and response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["Preference-Applied"] == "wait=30"
    assert time.monotonic() - started < 10
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 404


def test_the_wait_is_capped_by_the_setting_and_bare_wait_means_the_cap(settings, images, auth, make_app):
    client = make_app(replace(settings, max_prefer_wait_seconds=1)).test_client()
    for prefer in ("wait=3600", "wait", 'WAIT="5"; foo=bar'):
        started = time.monotonic()
        response = submit(client, auth, images, TINY, headers={"Prefer": prefer})
        assert response.status_code == 202 and response.headers["Preference-Applied"] == "wait=1", prefer
        assert time.monotonic() - started < 5


def test_other_preferences_and_no_preference_do_not_wait(client, auth, images, settings, make_app):
    for headers in ({}, {"Prefer": "respond-async"}, {"Prefer": "return=minimal"}):
        started = time.monotonic()
        response = submit(client, auth, images, TINY, headers=headers)
        assert response.status_code == 202 and "Preference-Applied" not in response.headers
        assert time.monotonic() - started < 1
    off = make_app(replace(settings, max_prefer_wait_seconds=0)).test_client()
    response = submit(off, auth, images, TINY, headers={"Prefer": "wait=30"})
    assert response.status_code == 202 and "Preference-Applied" not in response.headers


def test_a_malformed_wait_is_a_400_naming_prefer(client, auth, images):
    for value in ("wait=soon", "wait=-1", "wait=1.5", "wait=99999999999"):
        response = submit(client, auth, images, TINY, headers={"Prefer": value})
        assert response.status_code == 400, value
        assert response.get_json()["errors"][0]["field"] == "Prefer"
    assert client.get("/v1/jobs", headers=auth).get_json()["data"] == []  # nothing was created
