"""Many live viewers: event streams against the production server, and the per-process event hub.

Before the gevent workers and the shared subscription, `atelier run`'s gunicorn (gthread, 2 × 8
threads) gave every open `GET /v1/jobs/{id}/events` a thread and a Redis connection for as long
as its job ran: with 16 streams open nothing else was served (this test, run against that
command, failed: the 17th stream never got its first event, and `/healthz` and `GET
/v1/jobs/{id}` would have waited behind them just the same).
"""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from dataclasses import replace

import pytest
import redis

from api.stack import gunicorn_command
from shared.event_hub import Interrupted
from shared.services import Services
from tests.service import faults
from api.stack import free_port
from tests.service.helpers import ROOT, submit, wait_for

STREAMS = 300


def open_stream(port: int, path: str, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    return sock


def read_until(sock: socket.socket, marker: bytes, seen: bytes = b"") -> bytes:
    while marker not in seen:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"stream closed before {marker!r}: {seen[-300:]!r}")
        seen += chunk
    return seen


def timed_get(port: int, path: str, headers: dict) -> tuple[int, float]:
    began = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - began
    finally:
        connection.close()


@pytest.fixture
def server(settings, tmp_path):
    """The API as `atelier run` starts it (`api.stack.gunicorn_command`), on the test's settings."""
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    process = subprocess.Popen(gunicorn_command(f"127.0.0.1:{port}"), cwd=ROOT, env=os.environ | settings.to_env(),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: _answers(port), timeout=60, what="gunicorn")
    yield port
    process.terminate()
    process.wait(30)
    log.close()


def _answers(port: int) -> bool:
    try:
        return timed_get(port, "/healthz", {})[0] == 200
    except OSError:
        return False


def test_hundreds_of_open_streams_leave_the_api_responsive(server, client, auth, api_key, images):
    """300 viewers follow one queued job (no worker takes it, so their streams stay open); health
    checks and polls still answer within a second; then the job is canceled and every stream
    receives the terminal status and ends."""
    job = submit(client, auth, images, {"size": 32}).get_json()
    path = f"/v1/jobs/{job['id']}"
    streams = [open_stream(server, f"{path}/events", api_key) for _ in range(STREAMS)]
    try:
        for sock in streams:  # every stream is open and has its first event
            assert b"event: status" in read_until(sock, b"event: status")
        for _ in range(5):
            for route, headers in (("/healthz", {}), (path, auth)):
                status, seconds = timed_get(server, route, headers)
                assert status == 200 and seconds < 1.0, (route, status, seconds)
        canceled = client.post(f"{path}/cancel", headers=auth)
        assert canceled.status_code == 200
        for sock in streams:  # the cancellation reaches every viewer, then the server ends the stream
            assert b'"status": "canceled"' in read_until(sock, b'"status": "canceled"')
    finally:
        for sock in streams:
            sock.close()


def test_the_hub_fans_one_subscription_out_and_interrupts_viewers_when_redis_goes(make_redis, settings, images,
                                                                                  client_for):
    """Many viewers of one job in one process share one Redis subscription; each gets every event.
    When Redis goes away, every viewer is told (it may have missed events), and a new viewer
    cannot subscribe until Redis is back."""
    server = make_redis()
    live = replace(settings, redis_url=server.url(0))
    client, auth = client_for(live)
    job = submit(client, auth, images, {"size": 32}).get_json()
    hub, publisher = Services(live).event_hub, Services(live).redis
    viewers = [hub.subscribe(job["id"]) for _ in range(50)]
    other = hub.subscribe("another-job")
    assert publisher.pubsub_numpat() == 1  # one pattern subscription, whatever the number of viewers
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    for viewer in viewers:
        event = viewer.get(timeout=5)
        assert event is not None and event.kind == "status" and event.data["status"] == "canceled"
    assert other.get(timeout=0.2) is None  # another job's viewer hears nothing of this one
    faults.stop_redis(server)
    for viewer in [*viewers, other]:
        with pytest.raises(Interrupted):
            wait_for(lambda: viewer.get(timeout=0.5), timeout=10, what="the interruption")
    with pytest.raises(redis.RedisError):
        hub.subscribe(job["id"])
    faults.start_redis(server)
    viewer = hub.subscribe(job["id"])
    publisher.publish(f"atelier:job:{job['id']}", '{"event": "progress", "data": {"iteration": 1}}')
    event = viewer.get(timeout=5)
    assert event is not None and event.kind == "progress" and event.data == {"iteration": 1}
    viewer.close()
    assert hub.viewers() == 0
