"""The client library (`api.client`) against `atelier run`'s real server, worker and Redis: submit,
follow, download; typed problems; pages; retries after 429 and after a lost response (one job, not
two); a broken event stream resumed by polling; a server that is down."""
from __future__ import annotations

import logging
import os
import time
import uuid

import pytest
from PIL import Image

from api.client import (Client, ConfigurationError, Conflict, InvalidRequest, JobDeleted, NetworkError, NotFound,
                        RateLimited, Unauthorized, WaitTimeout)
from tests.service import faults
from api.stack import free_port

TINY = {"size": 32, "iterations": 1, "snapshot_every": 0}


@pytest.fixture
def client(live_stack, stack_key):
    with Client(live_stack.url, stack_key) as client:
        yield client


def test_submit_follow_and_download(client, images, tmp_path):
    job = client.submit(images["content"], [images["style"], images["style2"]], size=256, iterations=6,
                        snapshot_every=2)
    assert job.status == "queued" and not job.done
    events = list(client.events(job, timeout=180))
    assert events[0].type == "status" and events[-1].ends
    assert {"progress", "snapshot"} <= {e.type for e in events}
    done = events[-1].job
    assert done.status == "succeeded", done.error
    # the effective params are the ones that ran: 256 px is two scales, the blend is resolved
    assert done.params["scales"] == done.progress["scales"] == 2
    assert done.params["iterations"] == done.progress["total"] == 6
    assert done.params["style_weights"] == [1.0, 1.0]

    out = client.download_result(done, tmp_path / "out.png")
    assert Image.open(out).size == (done.result["width"], done.result["height"]) == (256, 192)
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # a file like any other the user makes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary file left behind
    snapshots = client.download_snapshots(job.id, tmp_path / "snaps")
    assert [p.name for p in snapshots] == ["000002.png", "000004.png"]
    assert all(Image.open(p).format == "PNG" for p in snapshots)
    assert client.wait(job.id).data == client.get(job).data  # an ended job: at once


def test_webhook_events_may_be_one_string(client, images):
    """`webhook_events="job.failed"`, a string as the form field takes it (comma-separated).
    Before, a string was joined letter by letter ("j,o,b,...") and refused with a 422 naming
    events no one asked for (this test failed so). The URL is a public address, so it is
    accepted; nothing is delivered to it: this job does not fail, and is deleted."""
    job = client.submit(images["content"], images["style"], webhook_url="http://93.184.216.34/hook",
                        webhook_events="job.failed", **TINY)
    assert job.status == "queued"
    client.delete(job)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_errors_are_typed_and_carry_the_problem(client, live_stack, images):
    with pytest.raises(InvalidRequest) as invalid:
        client.submit(images["content"], images["style"], size=5)
    assert invalid.value.status == 422 and invalid.value.fields == ["params.size"]
    assert "between 32 and 8192" in invalid.value.detail
    with pytest.raises(NotFound) as missing:
        client.get(str(uuid.uuid4()))
    assert missing.value.title == "Not Found" and missing.value.instance.startswith("/v1/jobs/")
    with pytest.raises(Unauthorized):
        Client(live_stack.url, "not-a-key").get(str(uuid.uuid4()))
    job = client.wait(client.submit(images["content"], images["style"], **TINY), timeout=120)
    with pytest.raises(Conflict, match="already ended"):
        client.cancel(job)
    with pytest.raises(NotFound, match="no result"):
        client.download_result(client.cancel(client.submit(images["content"], images["style"], size=128,
                                                           iterations=1000)), "never.png")


def test_list_pages_cancel_and_delete(client, images):
    first = client.submit(images["content"], images["style"], size=128, iterations=1000)
    second = client.submit(images["content"], images["style"], size=128, iterations=1000)
    assert [job.id for job in client.list(page_size=1)] == [second.id, first.id]  # newest first, two pages
    assert client.cancel(second).status in ("canceled", "running")
    assert client.wait(second, timeout=60).status == "canceled"
    assert [job.id for job in client.list(status="canceled")] == [second.id]
    for job in (first, second):
        client.delete(job)
        with pytest.raises(NotFound):
            client.get(job)
    assert list(client.list()) == []


def test_following_a_job_that_is_deleted_raises_job_deleted(client, images):
    """Before, `events` and `wait` (and so `atelier submit`) followed a deleted job's stream for ever."""
    job = client.submit(images["content"], images["style"], size=128, iterations=1000)
    events = client.events(job, timeout=60)
    assert next(events).type == "status"
    client.delete(job)
    started = time.monotonic()
    with pytest.raises(JobDeleted, match=f"job {job.id} was deleted"):
        list(events)
    assert time.monotonic() - started < 10
    with pytest.raises(NotFound):
        client.wait(job, timeout=60)


def test_wait_gives_up_after_its_timeout(client, images):
    job = client.submit(images["content"], images["style"], size=128, iterations=1000)
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        client.wait(job, timeout=2)
    assert 2 <= time.monotonic() - started < 6
    client.cancel(job)


def test_429_is_retried_after_retry_after(client, live_stack, stack_key, images, caplog):
    caplog.set_level(logging.WARNING, logger="atelier.client")
    started = time.monotonic()
    jobs = [client.submit(images["content"], images["style"], **TINY) for _ in range(4)]  # 3 per 2 s allowed
    assert len({job.id for job in jobs}) == 4
    retries = [r.getMessage() for r in caplog.records if "429" in r.getMessage()]
    assert retries and "retry 1 of 3" in retries[0], caplog.text
    assert time.monotonic() - started >= 0.9  # it slept as Retry-After said
    impatient = Client(live_stack.url, stack_key, max_retry_wait=0.01)  # a longer Retry-After is raised at once
    with pytest.raises(RateLimited) as limited:
        for _ in range(4):
            jobs.append(impatient.submit(images["content"], images["style"], **TINY))
    assert limited.value.status == 429 and limited.value.retry_after > 0
    for job in jobs:
        client.delete(job)


def test_a_lost_response_is_retried_without_a_second_job(live_stack, stack_key, images, caplog):
    caplog.set_level(logging.WARNING, logger="atelier.client")
    proxy = faults.lose_responses(live_stack.port, count=1)
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", stack_key) as client:
            job = client.submit(images["content"], images["style"], **TINY)
            assert [j.id for j in client.list()] == [job.id]  # the server made it once; the retry got it back
    finally:
        proxy.close()
    assert "POST /v1/jobs" in caplog.text and "retry 1 of 3" in caplog.text


def test_a_server_that_is_down_is_a_network_error():
    started = time.monotonic()
    with pytest.raises(NetworkError, match=r"cannot reach http://127\.0\.0\.1:\d+ .*is the server running"):
        Client(f"http://127.0.0.1:{free_port()}", "any-key", max_retries=2).get(str(uuid.uuid4()))
    assert time.monotonic() - started >= 1.5  # retried: 0.5 s, then 1 s


def test_url_and_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATELIER_URL", "http://example.invalid:1234/")
    monkeypatch.setenv("ATELIER_KEY", "k")
    assert Client().base_url == "http://example.invalid:1234"
    monkeypatch.delenv("ATELIER_KEY")
    with pytest.raises(ConfigurationError, match="ATELIER_KEY"):
        Client()
    with pytest.raises(ConfigurationError, match="http://"):
        Client("localhost:8000", "k")


def test_a_malformed_url_or_key_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match=r"the server URL 'http://\[::1' is not valid"):
        Client("http://[::1", "k")
    for key in ("clé", "k\n"):
        with pytest.raises(ConfigurationError, match="printable ASCII"):
            Client("http://127.0.0.1:9", key)


def test_a_broken_event_stream_is_resumed_by_polling(client, live_stack, images, caplog, tmp_path):
    """Redis stops mid-job: the server ends the stream with an `error` event, the client polls and
    still sees the job to its end. (Last in this module: it restarts the stack's Redis.)"""
    caplog.set_level(logging.WARNING, logger="atelier.client")
    job = client.submit(images["content"], images["style"], size=64, iterations=60)
    seen, polled_from = [], None
    try:
        for event in client.events(job, timeout=300):
            seen.append(event)
            if event.type == "progress" and polled_from is None and live_stack.redis.process is not None:
                faults.stop_redis(live_stack.redis)
            if polled_from is None and "polling" in caplog.text:
                polled_from = len(seen) - 1  # this event and the ones after it come from polls
                faults.start_redis(live_stack.redis)
    finally:
        if live_stack.redis.process is None:
            faults.start_redis(live_stack.redis)
    assert polled_from is not None and "no live events" in caplog.text, caplog.text
    assert any(e.type == "progress" for e in seen[polled_from:])  # progress kept coming after the stream broke
    assert seen[-1].ends and seen[-1].job.status == "succeeded", seen[-1].data
    assert Image.open(client.download_result(job, tmp_path / "out.png")).size == (64, 48)


def test_a_job_deleted_while_it_is_polled_raises_job_deleted(client, live_stack, images, caplog):
    """Redis is down, so `events` polls from the start; a 404 for the job it has seen is its
    deletion, as on the live stream (before, a plain `NotFound`). (It restarts the stack's Redis too.)"""
    caplog.set_level(logging.WARNING, logger="atelier.client")
    faults.stop_redis(live_stack.redis)
    try:
        job = client.submit(images["content"], images["style"], **TINY)  # kept in SQL; no worker hears of it
        events = client.events(job, timeout=60)
        assert next(events).data["status"] == "queued" and "polling" in caplog.text, caplog.text
        client.delete(job)
        with pytest.raises(JobDeleted, match=f"job {job.id} was deleted"):
            next(events)
    finally:
        faults.start_redis(live_stack.redis)
