"""The admin dashboard through Flask's test client: operators, sign-in, CSRF, the rate limit,
the jobs table and a job's page and actions, API keys, and the System page; the last tests run
a job on the real worker and read its loss history, snapshots and device back."""
from __future__ import annotations

import random
import re
import subprocess
import sys
import time
import uuid
from dataclasses import replace

import pytest
import torch
from sqlalchemy import select, update

from api.admin.storage import human_bytes
from shared import capacity, retention
from shared.devices import read_devices
from shared.models import Account, Job, LossPoint, Operator, WebhookEvent, WebhookStatus
from shared.services import Services
from shared.storage import input_key, job_prefix, sha256
from tests.service import faults
from tests.service.helpers import (OPERATOR_PASSWORD, ROOT, bearer, make_operator, new_key, png, submit, wait_for,
                                   wait_status)


def csrf(client, path: str = "/admin/sign-in") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, name: str, password: str = OPERATOR_PASSWORD, token: str | None = None):
    token = token if token is not None else csrf(client)
    return client.post("/admin/sign-in", data={"name": name, "password": password, "csrf_token": token})


@pytest.fixture
def admin(client, operator):
    """A test client with a signed-in operator."""
    assert sign_in(client, operator).status_code == 303
    return client


# ---- operators and signing in -------------------------------------------------------------------

def test_admin_create_stores_a_hash_and_refuses_duplicates_and_short_passwords(settings):
    name = f"cli-{uuid.uuid4().hex[:8]}"

    def create(password: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shared.cli", "admin", "create", name, "--password-stdin"],
                              input=password + "\n", capture_output=True, text=True, cwd=ROOT, env=settings.to_env(),
                              timeout=120)

    assert create("short").returncode == 1
    created = create(OPERATOR_PASSWORD)
    assert created.returncode == 0, created.stderr
    again = create(OPERATOR_PASSWORD)
    assert again.returncode == 1 and "already exists" in again.stderr
    services = Services(settings)
    with services.db.session() as session:
        stored = session.scalar(select(Operator).where(Operator.name == name))
    services.db.dispose()
    assert stored is not None and OPERATOR_PASSWORD not in stored.password_hash
    assert stored.password_hash.startswith("scrypt:")


def test_without_a_session_pages_redirect_to_sign_in_and_json_is_401(client):
    response = client.get("/admin/?status=queued")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/admin/sign-in?next=")
    assert client.get("/admin/jobs.json").status_code == 401
    assert client.get("/admin/system").status_code == 303
    assert client.get("/admin/sign-in").status_code == 200


def test_sign_in_with_the_right_password_only_and_sign_out(client, operator):
    wrong = sign_in(client, operator, "not the password")
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.get_data(as_text=True)
    assert sign_in(client, "nobody-" + operator, OPERATOR_PASSWORD).status_code == 401
    right = client.post("/admin/sign-in", data={"name": operator, "password": OPERATOR_PASSWORD,
                                                "csrf_token": csrf(client), "next": "/admin/keys"})
    assert right.status_code == 303 and right.headers["Location"] == "/admin/keys"
    assert client.get("/admin/").status_code == 200
    assert client.post("/admin/sign-out", data={"csrf_token": csrf(client, "/admin/")}).status_code == 303
    assert client.get("/admin/").status_code == 303


def test_sign_in_never_redirects_off_site(client, operator):
    response = client.post("/admin/sign-in", data={"name": operator, "password": OPERATOR_PASSWORD,
                                                   "csrf_token": csrf(client), "next": "//evil.example/admin"})
    assert response.headers["Location"] == "/admin/"


def test_forms_without_a_csrf_token_are_400_and_with_a_wrong_one_403(client, operator, settings, images, auth):
    assert client.post("/admin/sign-in", data={"name": operator, "password": OPERATOR_PASSWORD}).status_code == 400
    assert sign_in(client, operator, token="forged").status_code == 403
    assert sign_in(client, operator).status_code == 303
    job = submit(client, auth, images, {"size": 32, "iterations": 2}).get_json()
    missing = client.post(f"/admin/jobs/{job['id']}/cancel")
    assert missing.status_code == 400 and "text/html" in missing.content_type
    assert client.post(f"/admin/jobs/{job['id']}/cancel", data={"csrf_token": "forged"}).status_code == 403
    assert client.post("/admin/keys", data={"account": "x", "csrf_token": "forged"}).status_code == 403
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).get_json()["status"] == "queued"


def test_failed_sign_ins_are_rate_limited_per_address_and_name(settings, make_app, operator):
    client = make_app(replace(settings, admin_signin_limit="3 per minute")).test_client()
    for _ in range(3):
        assert sign_in(client, operator, "wrong password!").status_code == 401
    limited = sign_in(client, operator, OPERATOR_PASSWORD)  # even the right password waits now
    assert limited.status_code == 429 and "too many failed sign-ins" in limited.get_data(as_text=True)
    other = make_operator(settings)
    assert sign_in(client, other).status_code == 303  # another name is not locked out


@pytest.mark.parametrize(("behind_https", "secure_cookies", "secure"),
                         [(False, None, False), (True, None, True), (True, False, False), (False, True, True)],
                         ids=["plain", "behind-https", "behind-https-cookies-not-secure", "secure-cookies"])
def test_behind_https_the_session_cookie_is_secure_and_hsts_is_sent(settings, operator, make_app, behind_https,
                                                                      secure_cookies, secure):
    client = make_app(replace(settings, behind_https=behind_https, secure_cookies=secure_cookies)).test_client()
    proxy = {"X-Forwarded-Proto": "https"} if behind_https else {}
    page = client.get("/admin/sign-in", headers=proxy)
    [cookie] = page.headers.getlist("Set-Cookie")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert attributes >= {"httponly", "samesite"} and ("secure" in attributes) == secure, cookie
    for response in (page, client.get("/healthz", headers=proxy)):
        assert (response.headers.get("Strict-Transport-Security") == "max-age=31536000") == secure
    assert sign_in(client, operator).status_code == 303 and client.get("/admin/", headers=proxy).status_code == 200


@pytest.mark.parametrize("behind_https", [False, True], ids=["direct", "behind-https"])
def test_behind_https_sign_ins_are_limited_per_forwarded_client_address(settings, operator, make_app, behind_https):
    """Behind the proxy every request comes from the proxy's address: the one hop of
    X-Forwarded-For it adds names the client. Without ATELIER_BEHIND_HTTPS the header is not
    trusted (anyone could send one to dodge the limit)."""
    client = make_app(replace(settings, admin_signin_limit="2 per minute", behind_https=behind_https)).test_client()

    def attempt(address: str) -> int:
        token = csrf(client)
        return client.post("/admin/sign-in", headers={"X-Forwarded-For": address, "X-Forwarded-Proto": "https"},
                           data={"name": operator, "password": "wrong password!", "csrf_token": token}).status_code
    assert [attempt("203.0.113.1") for _ in range(3)] == [401, 401, 429]
    assert attempt("203.0.113.2") == (401 if behind_https else 429)


def test_sign_in_and_pages_work_while_redis_is_down(make_redis, settings, make_app, operator):
    server = make_redis()
    client = make_app(replace(settings, redis_url=server.url(0))).test_client()
    faults.stop_redis(server)
    assert sign_in(client, operator, "wrong password!").status_code == 401
    assert sign_in(client, operator).status_code == 303
    assert client.get("/admin/").status_code == 200 and client.get("/admin/jobs.json").status_code == 200
    system = client.get("/admin/system")
    assert system.status_code == 200 and "redis</dt><dd><span" in system.get_data(as_text=True).replace("\n", "")
    assert "unreachable" in system.get_data(as_text=True)
    faults.start_redis(server)


def test_successful_sign_ins_do_not_count_against_the_limit(settings, make_app, operator):
    app = make_app(replace(settings, admin_signin_limit="2 per minute"))
    for _ in range(4):
        assert sign_in(app.test_client(), operator).status_code == 303


# ---- jobs ---------------------------------------------------------------------------------------

def test_jobs_table_shows_all_tenants_newest_first_with_filters_search_and_pages(admin, settings, images):
    owners = [f"tenant-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    ids = []
    for i in range(3):
        key = bearer(new_key(settings, owners[i % 2]))
        ids.append(submit(admin, key, images, {"size": 32, "iterations": 2}).get_json()["id"])
    everything = admin.get("/admin/jobs.json").get_json()
    listed = [j["id"] for j in everything["jobs"]]
    assert [i for i in listed if i in ids] == ids[::-1]
    row = everything["jobs"][listed.index(ids[0])]
    assert row["owner"] == owners[0] and row["status"] == "queued" and row["size"] == 32 and row["iterations"] == 2
    assert row["attempts"] == 0 and row["run_time"] is None and row["queue_wait"] >= 0
    mine = admin.get(f"/admin/jobs.json?owner={owners[0]}").get_json()
    assert sorted(j["id"] for j in mine["jobs"]) == sorted([ids[0], ids[2]])
    assert admin.get(f"/admin/jobs.json?q={ids[1][:13].upper()}").get_json()["jobs"][0]["id"] == ids[1]
    assert all(j["status"] == "succeeded" for j in admin.get("/admin/jobs.json?status=succeeded").get_json()["jobs"])
    total = everything["total"]
    assert everything["pages"] == -(-total // 25)
    assert admin.get(f"/admin/jobs.json?page={everything['pages'] + 1}").get_json()["jobs"] == []
    assert admin.get("/admin/jobs.json?status=bogus").status_code == 400
    for bad in ("0", "²", "9" * 40):
        assert admin.get(f"/admin/jobs.json?page={bad}").status_code == 400
    page = admin.get(f"/admin/?owner={owners[0]}").get_data(as_text=True)
    assert f"owner={owners[0]}" in page and owners[1] in page  # the owner filter lists every account


def test_the_owner_filter_is_the_exact_account_name(admin, settings, images):
    """Edge and repeated whitespace are part of a name (accounts made before names were stripped)."""
    name = f"  acme  {uuid.uuid4().hex[:6]} "
    token = new_key(settings)
    job = submit(admin, bearer(token), images, {"size": 32, "iterations": 2}).get_json()
    services = Services(settings)
    with services.db.session() as session:
        session.execute(update(Account).where(Account.id == select(Job.account_id).where(Job.id == job["id"])
                                              .scalar_subquery()).values(name=name))
        session.commit()
    services.db.dispose()
    listed = admin.get("/admin/jobs.json", query_string={"owner": name}).get_json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert admin.get("/admin/jobs.json", query_string={"owner": name.strip()}).get_json()["jobs"] == []
    page = admin.get("/admin/", query_string={"owner": name}).get_data(as_text=True)
    assert f'<option value="{name}" selected>{name}</option>' in page


def test_job_page_and_its_cancel_retry_and_delete_actions(admin, settings, images, auth):
    hook = {"webhook_url": "https://93.184.215.14/atelier", "webhook_events": ["job.canceled"]}  # public: no DNS needed
    job = submit(admin, auth, images, {"size": 32, "iterations": 3, "style_weight": 12.5, **hook}).get_json()
    page = admin.get(f"/admin/jobs/{job['id']}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "style_weight" in html and "12.5" in html
    thumb = admin.get(f"/admin/jobs/{job['id']}/inputs/0")
    assert thumb.status_code == 200 and thumb.content_type == "image/png"
    assert admin.get(f"/admin/jobs/{job['id']}/inputs/9").status_code == 404
    assert admin.get(f"/admin/jobs/{job['id']}/inputs/{'9' * 30}").status_code == 404
    assert admin.get(f"/admin/jobs/{job['id']}/snapshots/{'9' * 30}").status_code == 404
    assert admin.get(f"/admin/jobs/{job['id']}/result").status_code == 404
    assert admin.get("/admin/jobs/no-such-job").status_code == 404
    token = csrf(admin, "/admin/")

    canceled = admin.post(f"/admin/jobs/{job['id']}/cancel", data={"csrf_token": token})
    assert canceled.status_code == 303
    assert admin.get(f"/admin/jobs/{job['id']}/state.json").get_json()["status"] == "canceled"
    delivery = re.search(r'<tr data-delivery="[^"]+".*?</tr>', admin.get(f"/admin/jobs/{job['id']}").get_data(as_text=True), re.S)
    assert "job.canceled" in delivery.group(0)  # the tenant's webhook hears of it, as with the API's cancel

    services = Services(settings)
    predicted = {"device": "cpu", "seconds": 3.5, "memory_mb": 1065.0, "measured": True}  # as a live worker's would be
    with services.db.session() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(prediction=predicted))
        session.commit()
    retried = admin.post(f"/admin/jobs/{job['id']}/retry", data={"csrf_token": token})
    new_id = retried.headers["Location"].rsplit("/", 1)[1]
    again = admin.get(f"/v1/jobs/{new_id}", headers=auth).get_json()  # same account, so its key sees it
    assert new_id != job["id"] and again["status"] == "queued" and again["params"] == job["params"]
    with services.db.session() as session:
        old, new = session.get(Job, job["id"]), session.get(Job, new_id)
        assert [i.sha256 for i in new.inputs] == [i.sha256 for i in old.inputs]
        assert new.api_key_id == old.api_key_id is not None
        assert (new.webhook_url, new.webhook_events) == (hook["webhook_url"], hook["webhook_events"])
        assert new.batch_key == old.batch_key is not None and new.prediction == predicted
    services.db.dispose()

    assert admin.post(f"/admin/jobs/{new_id}/delete", data={"csrf_token": token}).status_code == 303
    assert admin.get(f"/v1/jobs/{new_id}", headers=auth).status_code == 404
    assert admin.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200


def test_a_jobs_webhook_deliveries_are_listed_and_redelivered(admin, settings, images, auth):
    job = submit(admin, auth, images, {"size": 32, "iterations": 2}).get_json()
    services = Services(settings)
    with services.db.session() as session:
        event = WebhookEvent(job_id=job["id"], type="job.failed", url="https://hooks.example/atelier", payload="{}",
                             status=WebhookStatus.FAILED.value, attempts=7, failures=7)
        session.add(event)
        session.commit()
        event_id = event.id
    html = admin.get(f"/admin/jobs/{job['id']}").get_data(as_text=True)
    row = re.search(rf'<tr data-delivery="{event_id}".*?</tr>', html, re.S).group(0)
    assert "job.failed" in row and ">failed<" in row
    token = csrf(admin, "/admin/")
    assert admin.post(f"/admin/deliveries/{event_id}/redeliver", data={"csrf_token": "forged"}).status_code == 403
    assert admin.post("/admin/deliveries/msg_nope/redeliver", data={"csrf_token": token}).status_code == 404
    done = admin.post(f"/admin/deliveries/{event_id}/redeliver", data={"csrf_token": token})
    assert done.status_code == 303 and done.headers["Location"] == f"/admin/jobs/{job['id']}"
    with services.db.session() as session:
        again = session.get(WebhookEvent, event_id)
        assert again.status == WebhookStatus.PENDING.value and again.failures == 0
    services.db.dispose()


def test_nul_bytes_and_ids_that_cannot_be_are_refused_without_a_query(client, operator, images, auth):
    """PostgreSQL text cannot hold NUL: such a name, id or filter never reaches the database."""
    wrong = sign_in(client, operator + "\x00")
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.get_data(as_text=True)
    assert sign_in(client, operator).status_code == 303
    job = submit(client, auth, images, {"size": 32, "iterations": 2}).get_json()
    for path in ("/admin/jobs/%00", "/admin/jobs/%00/state.json", "/admin/jobs/%00/inputs/0", "/admin/jobs/%00/result",
                 f"/admin/jobs/{job['id'].upper()}"):
        assert client.get(path).status_code == 404, path
    for query in ("q=%00", "owner=%00", "owner=a%00b"):
        assert client.get(f"/admin/jobs.json?{query}").status_code == 400, query
        assert client.get(f"/admin/?{query}").status_code == 400, query
    token = csrf(client, "/admin/keys")
    for account in ("a\x00b", "a\tb"):
        refused = client.post("/admin/keys", data={"account": account, "csrf_token": token})
        assert refused.status_code == 400 and "account name" in refused.get_data(as_text=True), repr(account)
    for delivery in ("%00", "x" * 65):
        assert client.post(f"/admin/deliveries/{delivery}/redeliver", data={"csrf_token": token}).status_code == 404


# ---- keys and system ----------------------------------------------------------------------------

def test_keys_are_created_once_revoked_and_counted(admin, images):
    account = f"acct-{uuid.uuid4().hex[:6]}"
    token = csrf(admin, "/admin/keys")
    created = admin.post("/admin/keys", data={"account": account, "csrf_token": token})
    key = re.search(r'<pre class="token">([^<]+)</pre>', created.get_data(as_text=True)).group(1)
    assert key not in admin.get("/admin/keys").get_data(as_text=True)  # shown only that once
    auth = bearer(key)
    for _ in range(2):
        assert submit(admin, auth, images, {"size": 32, "iterations": 2}).status_code == 202
    row = re.search(rf'<tr data-key="{re.escape(key[:10])}">(.*?)</tr>', admin.get("/admin/keys").get_data(as_text=True), re.S)
    assert account in row.group(1) and '<td class="num">2</td>' in row.group(1) and "active" in row.group(1)
    key_id = re.search(r"/admin/keys/(\d+)/revoke", row.group(1)).group(1)
    assert admin.post(f"/admin/keys/{key_id}/revoke", data={"csrf_token": token}).status_code == 303
    assert admin.get("/v1/jobs", headers=auth).status_code == 401
    assert admin.post("/admin/keys/999999/revoke", data={"csrf_token": token}).status_code == 404
    assert admin.post(f"/admin/keys/{'9' * 30}/revoke", data={"csrf_token": token}).status_code == 404
    assert admin.post("/admin/keys", data={"account": "  ", "csrf_token": token}).status_code == 400


def test_system_page_shows_readiness_queues_and_windows(admin, images, auth):
    submit(admin, auth, images, {"size": 32, "iterations": 2})
    html = admin.get("/admin/system").get_data(as_text=True)
    depth = int(re.search(r"<dt>gpu</dt><dd>(\d+) waiting", html).group(1))
    assert depth >= 1  # no worker consumes this Redis database
    assert html.count(">ok</span>") == 2 and "last hour" in html and "last day" in html


# ---- with the real worker -----------------------------------------------------------------------

def test_a_finished_job_has_its_loss_history_snapshots_result_and_stats(live_app, worker_settings, images, live_auth,
                                                                          tmp_path, monkeypatch):
    client = live_app.test_client()
    assert sign_in(client, make_operator(worker_settings)).status_code == 303
    job = submit(client, live_auth, images, {"size": 32, "iterations": 6, "snapshot_every": 2}).get_json()
    wait_status(client, live_auth, job["id"], {"succeeded"})
    state = client.get(f"/admin/jobs/{job['id']}/state.json").get_json()
    iterations = [p[0] for p in state["losses"]]
    assert iterations == sorted(iterations) and iterations[-1] == 6
    assert all(isinstance(v, float) for p in state["losses"] for v in p[1:]) and state["losses"][-1][3] > 0
    assert [s["iteration"] for s in state["snapshots"]] == [2, 4]
    assert client.get(state["snapshots"][0]["url"]).content_type == "image/png"
    assert state["result"]["quality"] and client.get(state["result"]["url"]).status_code == 200
    assert state["percent"] == 100 and state["run_time"] > 0
    services = Services(worker_settings)
    with services.db.session() as session:
        assert session.scalar(select(LossPoint.losses).where(LossPoint.job_id == job["id"]).limit(1)).keys() >= {
            "content", "style", "total"}
    services.db.dispose()
    html = wait_for(lambda: h if "CPU (" in (h := client.get("/admin/system").get_data(as_text=True)) else None,
                    timeout=30, what="the worker and its device on the System page")
    assert "No worker answered" not in html
    # the precision jobs run in there by default: this CPU's kind decides it (resolve_precision)
    shown = re.search(r"CPU \(\d+ cores\) · [\d.]+ GiB · <span[^>]*>(\w+)</span>", html).group(1)
    assert shown == ("bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32")
    # and the capacity model that predicts its jobs: measured, or estimated where none was
    assert f"capacity model cpu-{shown}: measured" in html
    # and the pace it measured on its own jobs (this one ran alone), at which its jobs are predicted
    (report,) = [d for node, d in read_devices(services.redis).items() if f">{node}<" in html]
    assert f"its jobs take {report['pace']:.2f}× the model's time" in html
    others = {key: m for key, m in capacity.models().items() if key != f"cpu-{shown}"}
    capacity.write(tmp_path / "calibration.json", others)
    monkeypatch.setattr(capacity, "CALIBRATION", tmp_path / "calibration.json")
    estimated = client.get("/admin/system").get_data(as_text=True)
    assert f"capacity model cpu-{shown}: estimated, not yet calibrated on such a device" in estimated
    assert re.search(r'title="estimated from cpu-\w+: measured: bench/calibrate.py', estimated)
    finished = int(re.search(r'<th>last hour</th><td class="num">(\d+)</td>', html).group(1))
    assert finished >= 1


def test_system_page_shows_each_accounts_disk_usage_and_sets_its_retention(live_app, worker_settings):
    """The usage is what the job's files weigh on disk; the retention form sets the account's
    override (empty: back to the server's default); once the sweep removed the files, the usage
    drops to nothing, the job page says so and Retry is refused (its inputs are gone)."""
    client = live_app.test_client()
    assert sign_in(client, make_operator(worker_settings)).status_code == 303
    name = f"usage-{uuid.uuid4().hex[:6]}"
    auth = bearer(new_key(worker_settings, name))
    seed = random.randrange(10**6)
    own = {"content": png(40, 30, seed), "style": png(24, 24, seed + 1)}
    job = submit(client, auth, own, {"size": 32, "iterations": 4, "snapshot_every": 2}).get_json()
    assert wait_status(client, auth, job["id"], {"succeeded", "failed"})["status"] == "succeeded"
    storage = live_app.extensions["atelier"].storage
    # the worker deletes the checkpoint just after it records the result: the disk settles then
    wait_for(lambda: not list((storage.root / job_prefix(job["id"])).glob("checkpoint-*")), timeout=30,
             what="the checkpoint to be deleted")
    on_disk = sum(f.stat().st_size for f in (storage.root / job_prefix(job["id"])).rglob("*") if f.is_file()) \
        + len(own["content"]) + len(own["style"])

    def row() -> str:
        html = client.get("/admin/system").get_data(as_text=True)
        return re.search(rf'<tr data-account="{name}">(.*?)</tr>', html, re.S).group(1)
    assert f">{human_bytes(on_disk)}<" in row() and 'placeholder="30"' in row()
    account_id = re.search(r"/admin/accounts/(\d+)/retention", row()).group(1)
    token = csrf(client, "/admin/system")
    for bad in ("-1", "soon", "1e9", "nan"):
        assert client.post(f"/admin/accounts/{account_id}/retention",
                           data={"retention_days": bad, "csrf_token": token}).status_code == 400
    assert client.post("/admin/accounts/999999999/retention", data={"retention_days": "1", "csrf_token": token}
                       ).status_code == 404
    done = client.post(f"/admin/accounts/{account_id}/retention", data={"retention_days": "7", "csrf_token": token},
                       follow_redirects=True)
    assert f"{name}: job files are kept 7 days after a job ends" in done.get_data(as_text=True)
    assert 'value="7"' in row()
    client.post(f"/admin/accounts/{account_id}/retention", data={"retention_days": "", "csrf_token": token})
    services = Services(worker_settings)
    with services.db.session() as session:
        assert session.get(Account, int(account_id)).retention_days is None
        retention.set_days(session, int(account_id), 1 / 86400)
    time.sleep(1.5)
    assert job["id"] in retention.sweep(services)
    assert ">0 B<" in row() and not storage.exists(input_key(sha256(own["content"])))
    page = client.get(f"/admin/jobs/{job['id']}").get_data(as_text=True)
    assert 'id="data-removed"' in page
    retried = client.post(f"/admin/jobs/{job['id']}/retry", data={"csrf_token": token}, follow_redirects=True)
    assert "Not retried: the content image" in retried.get_data(as_text=True) and "no longer stored" in \
        retried.get_data(as_text=True)
    services.db.dispose()
