"""Health, readiness, the OpenAPI document, the docs page and the `atelier` service commands."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from api.stack import free_port, secret_key
from shared import keys
from shared.config import Settings
from shared.services import Services
from tests.service import faults
from tests.service.helpers import ROOT, bearer, submit, wait_for


def test_the_stacks_secret_key_is_its_owners_alone_from_the_start(tmp_path, monkeypatch):
    """`var/secret_key`, which signs admin sessions: private as it is created. Before, it was
    written under the umask and chmod-ed after, readable by anyone in between (with no chmod
    allowed, this test failed so). Whole, kept across reads, and nothing left beside it."""
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)  # only what creating it sets
    umask = os.umask(0)
    try:
        key = secret_key(tmp_path / "secret_key")
    finally:
        os.umask(umask)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert secret_key(tmp_path / "secret_key") == key
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]


def test_healthz_needs_nothing(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_checks_database_and_redis(client):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["redis"] == "ok"


def test_readyz_is_503_when_redis_is_down(make_redis, settings, make_app):
    server = make_redis()
    client = make_app(replace(settings, redis_url=server.url(0))).test_client()
    assert client.get("/readyz").status_code == 200
    faults.stop_redis(server)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    assert "redis" in response.get_json()["detail"] and "database" not in response.get_json()["detail"]
    faults.start_redis(server)
    assert client.get("/readyz").status_code == 200


def test_readyz_is_503_when_the_database_is_down(settings, make_app):
    dead = replace(settings, database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    response = make_app(dead).test_client().get("/readyz")
    assert response.status_code == 503 and "database" in response.get_json()["detail"]


def test_events_are_503_when_redis_is_down(make_redis, settings, make_app, auth, images):
    server = make_redis()
    client = make_app(replace(settings, redis_url=server.url(0))).test_client()
    job = submit(client, auth, images, {"size": 32}).get_json()
    faults.stop_redis(server)
    response = client.get(f"/v1/jobs/{job['id']}/events", headers=auth)
    assert response.status_code == 503 and response.mimetype == "application/problem+json"


def test_openapi_is_valid_3_1_and_carries_the_limits(client, settings):
    spec = client.get("/v1/openapi.json").get_json()
    validate(spec)  # raises on an invalid document
    assert spec["openapi"].startswith("3.1")
    params = spec["components"]["schemas"]["JobParams"]
    assert params["additionalProperties"] is False
    assert params["properties"]["size"]["maximum"] == settings.max_size
    assert set(spec["paths"]) >= {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/result",
                                  "/v1/jobs/{job_id}/snapshots/{iteration}", "/v1/jobs/{job_id}/events", "/healthz", "/readyz"}


def test_openapi_declares_files_images_and_prefer_as_generators_read_them(client, settings):
    submit = client.get("/v1/openapi.json").get_json()["paths"]["/v1/jobs"]["post"]
    form = submit["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["content"]["format"] == form["properties"]["style"]["items"]["format"] == "binary"
    assert form["additionalProperties"] is False
    prefer = next(p for p in submit["parameters"] if p["name"] == "Prefer")
    assert prefer["in"] == "header" and f"at most {settings.max_prefer_wait_seconds}" in prefer["description"]
    assert {"201", "202"} <= set(submit["responses"])
    assert "Preference-Applied" in submit["responses"]["201"]["headers"]
    result = client.get("/v1/openapi.json").get_json()["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]
    assert set(result["content"]) == {"image/png", "image/jpeg", "image/webp", "application/octet-stream"}
    assert result["content"]["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}


def test_docs_page_is_self_contained(client):
    response = client.get("/docs")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "snapshot_every" in html and "/v1/jobs/{job_id}/cancel" in html
    assert not re.search(r"""(src|href)=["']https?://""", html)  # nothing fetched from elsewhere
    assert "`" not in html  # the descriptions' Markdown code spans are rendered...
    assert "<code>Location</code> is the job&#39;s URL" in html and "Header <code>Prefer</code>" in html


def test_docs_code_spans_escape_before_they_mark_up():
    from api.docs import code_spans

    assert code_spans("`a<b>` & <script>`x`") == "<code>a&lt;b&gt;</code> &amp; &lt;script&gt;<code>x</code>"
    assert code_spans(None) == "" and code_spans("one ` tick") == "one ` tick"


def atelier(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], env=os.environ | env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_keys_create_prints_the_key_last_and_stores_only_its_hash(settings):
    name = f"cli-{uuid.uuid4().hex[:6]}"
    result = atelier("keys", "create", name, env=settings.to_env())
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith(keys.PREFIX) and len(token) > 40
    services = Services(settings)
    with services.db.session() as session:
        assert keys.live_key(session, token) is not None
        stored = session.execute(keys.select(keys.ApiKey.key_hash)).scalars().all()
    assert token not in stored and keys.hash_key(token) in stored
    services.db.dispose()


def test_keys_create_strips_the_account_name(settings):
    name = f"cli  {uuid.uuid4().hex[:6]}"
    result = atelier("keys", "create", f"  {name} \t", env=settings.to_env())
    assert result.returncode == 0, result.stderr
    assert f"API key for account {name!r}" in result.stdout
    services = Services(settings)
    with services.db.session() as session:
        token = result.stdout.strip().splitlines()[-1]
        account_id = keys.live_key(session, token).account_id
        assert session.scalar(keys.select(keys.Account.name).where(keys.Account.id == account_id)) == name
    services.db.dispose()


def test_keys_create_refuses_a_name_that_cannot_be_stored_in_one_line(settings):
    for name in ("", "a\tb", "x" * 101):
        result = atelier("keys", "create", name, env=settings.to_env())
        assert result.returncode == 2 and result.stdout == "", repr(name)
        assert result.stderr.splitlines() == [
            "atelier keys create: error: the account name must be 1 to 100 printable characters"], repr(name)


def test_keys_create_on_an_unmigrated_database_says_to_migrate(tmp_path):
    result = atelier("keys", "create", "early", env={"ATELIER_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"atelier keys create: error: no such table: accounts in sqlite:///{tmp_path / 'new.db'}; if its schema is "
        "missing or old, `atelier migrate` brings it up to date"]


def test_migrate_is_idempotent(settings):
    for _ in range(2):
        result = atelier("migrate", env=settings.to_env())
        assert result.returncode == 0, result.stderr


def http(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict | bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            status = response.status
            kind = response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        body, status, kind = exc.read(), exc.code, exc.headers.get_content_type()
    except OSError:
        return 0, b""
    return status, json.loads(body) if kind.endswith("json") else body


def multipart(fields: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
             f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
             for name, (filename, data, kind) in fields.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                little = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per 32-bit word
                found.add(str(ipaddress.ip_address(little)))
    return found


def test_the_banner_says_who_can_reach_the_api():
    from api.stack import banner

    exposed = banner(replace(Settings(), host="0.0.0.0", port=8123))
    assert "listening on every network interface (0.0.0.0:8123)" in exposed and "TLS" in exposed
    assert "http://127.0.0.1:8123/docs" in exposed
    assert "this machine only" in banner(Settings(host="127.0.0.1"))
    assert "this machine only" in banner(Settings(host="::1")) and "http://[::1]:8000/v1/jobs" in banner(Settings(host="::1"))


SUPERVISED = """
import logging, os, sys
from shared.supervisor import Child, Supervisor
logging.basicConfig(level=logging.INFO, format="%(message)s")
children = [Child("first", ["sleep", "600"]), Child("second", sys.argv[1:]), Child("redis", ["sleep", "600"], stop_last=True)]
Supervisor(children, dict(os.environ), grace_seconds=5).run(lambda: print("all started", file=sys.stderr, flush=True))
"""


def _supervised(tmp_path: Path, *second: str) -> tuple[subprocess.Popen, Path]:
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-c", SUPERVISED, *second], cwd=ROOT, stderr=log), log_path


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name)
def test_a_supervisor_stops_its_children_on_each_stop_signal(tmp_path, signum):
    """SIGHUP (the terminal or SSH session closed) and SIGQUIT too: each child runs in a session of
    its own, so a supervisor that died of the signal left them all running (a second `atelier run`
    then found its port taken and another worker on its queue)."""
    supervisor, log_path = _supervised(tmp_path, "sleep", "600")
    wait_for(lambda: "all started" in log_path.read_text(), timeout=30, what="the children to start")
    pids = [int(p) for p in re.findall(r"started \w+ \(pid (\d+)\)", log_path.read_text())]
    supervisor.send_signal(signum)
    assert supervisor.wait(30) == 0 and len(pids) == 3
    assert all(_gone(pid) for pid in pids), log_path.read_text()


def test_a_supervisor_that_fails_stops_the_children_it_started(tmp_path):
    supervisor, log_path = _supervised(tmp_path, str(tmp_path / "no-such-program"))
    assert supervisor.wait(30) != 0  # the second child cannot start
    pids = [int(p) for p in re.findall(r"started \w+ \(pid (\d+)\)", log_path.read_text())]
    assert len(pids) == 1 and _gone(pids[0]), log_path.read_text()


def test_atelier_run_serves_a_job_restarts_a_dead_child_and_stops_cleanly(tmp_path, images):
    port = free_port()
    env = os.environ | {"ATELIER_PORT": str(port), "ATELIER_DATABASE_URL": f"sqlite:///{tmp_path / 'var/atelier.db'}",
                        "ATELIER_STORAGE_DIR": str(tmp_path / "var/storage"), "ATELIER_DEVICE": "cpu",
                        "PYTHONPATH": str(ROOT)}
    env.pop("ATELIER_REDIS_URL", None)
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        stack = subprocess.Popen([sys.executable, "-m", "shared.cli", "run"], cwd=tmp_path, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http(f"{base}/readyz")[0] == 200, timeout=90, interval=0.5, what="atelier run to be ready")
        output = log_path.read_text()
        assert f"{base}/docs" in output and "redis://127.0.0.1:" in output  # printed URLs, embedded Redis
        # safe by default: the API listens on loopback only, and says so
        assert listening_addresses(port) == {"127.0.0.1"}
        assert "listening on this machine only (ATELIER_HOST=0.0.0.0 exposes it to the network)" in output

        created = subprocess.run([sys.executable, "-m", "shared.cli", "keys", "create", "me"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60)
        auth = bearer(created.stdout.splitlines()[-1])
        body, kind = multipart({"content": ("c.png", images["content"], "image/png"),
                                "style": ("s.png", images["style"], "image/png"),
                                "params": ("params.json", b'{"size": 32, "iterations": 4, "snapshot_every": 2}',
                                           "application/json")})
        status, job = http(f"{base}/v1/jobs", body, auth | {"Content-Type": kind})
        assert status == 202, job
        done = wait_for(lambda: (j := http(f"{base}/v1/jobs/{job['id']}", headers=auth)[1])["status"]
                        in ("succeeded", "failed") and j, timeout=90, interval=0.5, what="the job")
        assert done["status"] == "succeeded" and done["snapshots"], done

        worker_pid = int(re.search(r"started worker \(pid (\d+)\)", log_path.read_text()).group(1))
        faults.kill_process(worker_pid)
        wait_for(lambda: re.search(r"started worker \(pid (?!%d\))\d+\)" % worker_pid, log_path.read_text()),
                 timeout=30, what="the worker to be restarted")
        assert f"worker (pid {worker_pid}) exited with code -9; restarting" in log_path.read_text()
    finally:
        stack.send_signal(signal.SIGTERM)
        assert stack.wait(60) == 0
    pids = [int(p) for p in re.findall(r"started \w+ \(pid (\d+)\)", log_path.read_text())]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], pid
