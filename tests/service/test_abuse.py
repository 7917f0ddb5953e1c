"""Abuse limits: a per-key submission rate (Flask-Limiter counting in the real Redis) and a cap on a
key's queued + running jobs. Both answer 429 problem+json with `Retry-After`, per key, and leave
the service healthy."""
from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
import redis

from api.app import create_app
from tests.service.conftest import new_key, submit
from tests.service.test_errors import assert_problem

TINY = {"size": 32, "iterations": 2}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def make_app():
    apps = []

    def make(settings):
        app = create_app(settings)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["atelier"].db.dispose()


def test_submission_rate_limit_per_key_shared_through_redis(settings, make_app, images):
    settings = replace(settings, submit_rate_limit="3/minute", max_active_jobs=50, max_active_jobs_per_key=50)
    # two API processes (apps) with their own Limiter objects: the count lives in Redis, not in either
    first, second = make_app(settings).test_client(), make_app(settings).test_client()
    account = f"rate-{uuid.uuid4().hex[:8]}"
    key, other_key = new_key(settings, account), new_key(settings, account)
    statuses = [submit(client, bearer(key), images, TINY).status_code for client in (first, second, first)]
    assert statuses == [202, 202, 202]

    response = submit(second, bearer(key), images, TINY)
    body = assert_problem(response, 429)
    assert "too many submissions" in body["detail"] and "3/minute" in body["detail"]
    assert 0 < int(response.headers["Retry-After"]) <= 60
    # the count is in Redis, keyed by the key's hash, never by the plaintext key
    stored = redis.Redis.from_url(settings.redis_url).keys("*atelier-api*key:*")
    assert stored and not any(key.encode() in name for name in stored)

    # per key: another key of the same account still submits; reads are not limited
    assert submit(first, bearer(other_key), images, TINY).status_code == 202
    assert first.get("/v1/jobs", headers=bearer(key)).status_code == 200
    assert first.get("/healthz").status_code == 200


def test_rate_limit_counts_no_unauthenticated_requests(settings, make_app, images):
    settings = replace(settings, submit_rate_limit="1/minute")
    client = make_app(settings).test_client()
    for _ in range(3):
        assert_problem(submit(client, bearer("atl_unknown"), images, TINY), 401)
    key = new_key(settings)
    assert submit(client, bearer(key), images, TINY).status_code == 202
    assert_problem(submit(client, bearer(key), images, TINY), 429)


def test_active_jobs_cap_per_key(settings, make_app, images):
    settings = replace(settings, max_active_jobs_per_key=2, max_active_jobs=8)
    client = make_app(settings).test_client()
    account = f"cap-{uuid.uuid4().hex[:8]}"
    key, other_key = new_key(settings, account), new_key(settings, account)
    jobs = [submit(client, bearer(key), images, TINY).get_json()["id"] for _ in range(2)]

    response = submit(client, bearer(key), images, TINY)
    body = assert_problem(response, 429)
    assert "API key" in body["detail"] and "limit is 2" in body["detail"]
    assert int(response.headers["Retry-After"]) > 0
    # another key of the same account has its own count
    assert submit(client, bearer(other_key), images, TINY).status_code == 202
    # a job that ends frees a place
    assert client.post(f"/v1/jobs/{jobs[0]}/cancel", headers=bearer(key)).status_code == 200
    assert submit(client, bearer(key), images, TINY).status_code == 202
    assert client.get("/healthz").status_code == 200


def test_active_jobs_cap_per_account_across_keys(settings, make_app, images):
    settings = replace(settings, max_active_jobs_per_key=5, max_active_jobs=3)
    client = make_app(settings).test_client()
    account = f"cap-{uuid.uuid4().hex[:8]}"
    keys = [new_key(settings, account) for _ in range(2)]
    for token in (keys[0], keys[0], keys[1]):
        assert submit(client, bearer(token), images, TINY).status_code == 202
    body = assert_problem(submit(client, bearer(keys[1]), images, TINY), 429)
    assert "account" in body["detail"] and "limit is 3" in body["detail"]


def test_rate_limit_skipped_while_redis_is_down(settings, make_app, make_redis, images):
    """The limiter's storage is down: submissions are not refused with a 500 (nor counted)."""
    server = make_redis()
    settings = replace(settings, redis_url=server.url(1), submit_rate_limit="1/minute")
    client = make_app(settings).test_client()
    key = new_key(settings)
    server.stop()
    try:
        response = submit(client, bearer(key), images, TINY)
        assert response.status_code in (202, 503), response.get_data(as_text=True)
        assert client.get("/healthz").status_code == 200
    finally:
        server.start()
    # back up: counting resumes
    statuses = [submit(client, bearer(key), images, TINY).status_code for _ in range(3)]
    assert 429 in statuses and 500 not in statuses
