"""The admin dashboard in real headless Chromium (Debian's `chromium`, driven by Playwright)
against the app served on a real port, with the real Celery worker running the jobs.

Set ATELIER_SCREENSHOT_DIR=docs to refresh the README's screenshots from these tests.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from werkzeug.serving import make_server

from api.stack import free_port
from shared.models import Job
from shared.services import Services
from tests.service.helpers import OPERATOR_PASSWORD, bearer, make_operator, new_key, submit, wait_for, wait_status

CHROMIUM = os.environ.get("ATELIER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = 60_000
STANDING = re.compile(r"^(next in the queue|\d+ jobs? ahead) · starts in (\d+ min )?\d+ s · ETA (\d+ min )?\d+ s$")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (.ci/run installs it)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server(worker, worker_settings, make_app) -> Iterator[tuple[str, object]]:
    """The API app on a free port in a server thread; yields its base URL and the app."""
    app = make_app(replace(worker_settings, secret_key=uuid.uuid4().hex))
    httpd = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", app
    httpd.shutdown()
    thread.join(10)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def sign_in(page: Page, base: str, name: str, password: str = OPERATOR_PASSWORD) -> None:
    """Fill in the sign-in form, going to it unless already there (where it keeps `next`)."""
    if "/admin/sign-in" not in page.url:
        page.goto(f"{base}/admin/sign-in")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=path, full_page=True)
    assert path.stat().st_size < 2 * 2**20
    if target := os.environ.get("ATELIER_SCREENSHOT_DIR"):
        shutil.copy(path, Path(target) / name)


def percent(page: Page, job_id: str) -> float:
    style = page.get_attribute(f'tr[data-id="{job_id}"] .bar', "style") or ""
    return float(re.search(r"width:\s*([\d.]+)%", style).group(1))


def test_a_job_appears_progresses_live_shows_snapshots_and_is_canceled(page, server, worker_settings, images, tmp_path):
    base, app = server
    client = app.test_client()
    sign_in(page, base, make_operator(worker_settings))
    expect(page).to_have_url(f"{base}/admin/")
    page.evaluate("window.notReloaded = true")
    auth = bearer(new_key(worker_settings, "browser-tenant"))
    job = submit(client, auth, images, {"size": 48, "iterations": 1000, "snapshot_every": 10}).get_json()

    row = page.locator(f'tr[data-id="{job["id"]}"]')
    expect(row).to_be_visible()  # it appeared without a reload
    expect(row.locator(".badge")).to_have_text("running")
    first = wait_for(lambda: percent(page, job["id"]), what="progress to show")
    wait_for(lambda: percent(page, job["id"]) > first, what="progress to advance in the table")
    assert page.evaluate("window.notReloaded") is True
    screenshot(page, tmp_path, "admin-jobs.png")

    # a job queued behind it: its page says where it stands (behind the running job, and any queued
    # job of earlier tests in this database that no worker of theirs took)
    queued = submit(client, auth, images, {"size": 32, "iterations": 2, "snapshot_every": 0}).get_json()
    page.goto(f"{base}/admin/jobs/{queued['id']}")
    expect(page.locator("#eta")).to_have_text(STANDING)
    page.goto(f"{base}/admin/")
    expect(page.locator(f'tr[data-id="{queued["id"]}"] td.standing')).to_have_text(STANDING)  # in the table too

    row.locator("a").click()
    expect(page).to_have_url(f"{base}/admin/jobs/{job['id']}")
    expect(page.locator("#strip img").first).to_be_visible()  # a snapshot appeared while we watched
    expect(page.locator("#chart path.series-total")).to_have_count(1)
    expect(page.locator(".thumbs img")).to_have_count(2)
    page.wait_for_function("document.querySelectorAll('#strip img').length >= 2")
    expect(page.locator("#eta")).to_contain_text("ETA")
    page.click("#play")
    expect(page.locator("#frame-label")).to_contain_text("iteration")
    screenshot(page, tmp_path, "admin-job.png")

    page.click("#cancel-form button")
    expect(page.locator("#status")).to_have_text("canceled")
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).get_json()["status"] == "canceled"

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: wide tables scroll in their box, not the page
    for path in (f"/admin/jobs/{job['id']}", "/admin/"):
        page.goto(base + path)
        expect(page.locator("main h1")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, tmp_path, "admin-jobs-phone.png")


def ran_on(settings, job_id: str) -> str:
    """The worker that ran a job, as recorded for operators (not in the API's job)."""
    services = Services(settings)
    with services.db.session() as session:
        worker = session.get(Job, job_id).result_run["worker"]
    services.db.dispose()
    return worker


def test_a_job_page_shows_the_result_its_quality_and_how_it_ran(page, server, worker_settings, images):
    """The page open while the job runs turns into its result, without a reload."""
    base, app = server
    client = app.test_client()
    sign_in(page, base, make_operator(worker_settings))
    auth = bearer(new_key(worker_settings, "browser-tenant"))
    job = submit(client, auth, images, {"size": 32, "iterations": 30}).get_json()
    page.goto(f"{base}/admin/jobs/{job['id']}")
    expect(page.locator("#run")).to_be_hidden()
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#status")).to_have_text("succeeded")
    done = client.get(f"/v1/jobs/{job['id']}", headers=auth).get_json()
    expect(page.locator("#result-img")).to_be_visible()
    assert page.evaluate("document.getElementById('result-img').naturalWidth") == done["result"]["width"]
    expect(page.locator("#quality")).to_contain_text("style distance")
    run, worker = done["run"], ran_on(worker_settings, job["id"])
    expect(page.locator("#run")).to_have_text(re.compile(
        re.escape(f"Ran on {worker} ({run['device_name']}, cpu) in {run['precision']}: ")
        + r"\d+\.\d s, " + re.escape(f"peak memory {run['peak_memory_mb']} MB") + "$"))
    assert page.evaluate("window.notReloaded") is True


def test_revoking_a_key(page, server, worker_settings):
    base, app = server
    sign_in(page, base, make_operator(worker_settings))
    page.goto(f"{base}/admin/keys")
    page.fill("input[name=account]", f"revoke-{uuid.uuid4().hex[:6]}")
    page.click("text=Create key")
    token = page.locator("#new-key pre").inner_text().strip()
    auth = bearer(token)
    assert app.test_client().get("/v1/jobs", headers=auth).status_code == 200
    row = page.locator(f'tr[data-key="{token[:10]}"]')
    row.locator("button", has_text="Revoke").click()
    expect(page.locator(f'tr[data-key="{token[:10]}"] .badge')).to_contain_text("revoked")
    assert app.test_client().get("/v1/jobs", headers=auth).status_code == 401


def test_the_owner_filter_selects_an_account_whose_name_has_repeated_spaces(page, server, worker_settings, images):
    """Browsers collapse whitespace in an option's text: its value must carry the name."""
    base, app = server
    name = f"acme  {uuid.uuid4().hex[:6]}"
    client = app.test_client()
    mine = submit(client, bearer(new_key(worker_settings, name)), images, {"size": 32, "iterations": 2}).get_json()
    other = submit(client, bearer(new_key(worker_settings)), images, {"size": 32, "iterations": 2}).get_json()
    sign_in(page, base, make_operator(worker_settings))
    page.goto(f"{base}/admin/")
    page.locator("select[name=owner] option", has_text=name.split()[-1]).evaluate("o => { o.selected = true; }")
    page.click("text=Filter")
    expect(page.locator(f'tr[data-id="{mine["id"]}"]')).to_be_visible(timeout=10_000)
    expect(page.locator(f'tr[data-id="{other["id"]}"]')).to_have_count(0)
    assert page.eval_on_selector("select[name=owner]", "s => s.value") == name


def test_refused_without_a_session_and_with_a_bad_csrf_token(page, server, worker_settings, images):
    base, app = server
    page.goto(f"{base}/admin/keys")
    expect(page).to_have_url(re.compile(r"/admin/sign-in\?next="))
    sign_in(page, base, make_operator(worker_settings))
    expect(page).to_have_url(f"{base}/admin/keys")  # back where it was going
    auth = bearer(new_key(worker_settings))
    job = submit(app.test_client(), auth, images, {"size": 32, "iterations": 2}).get_json()
    wait_status(app.test_client(), auth, job["id"], {"succeeded"})
    page.goto(f"{base}/admin/jobs/{job['id']}")
    page.evaluate("document.querySelector('#live form[action$=\"/delete\"] input[name=csrf_token]').value = 'forged'")
    page.click("text=Delete")
    expect(page.locator("h1")).to_contain_text("403")
    page.goto(f"{base}/admin/jobs/{job['id']}")
    page.evaluate("document.querySelector('#live form[action$=\"/delete\"] input[name=csrf_token]').remove()")
    page.click("text=Delete")
    expect(page.locator("h1")).to_contain_text("400")
    assert app.test_client().get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200


def test_failed_sign_ins_are_rate_limited(page, server, worker_settings):
    base, _ = server
    name = make_operator(worker_settings)
    for _ in range(5):  # the default limit: 5 failed sign-ins a minute
        sign_in(page, base, name, "wrong password")
        expect(page.locator(".error")).to_have_text("Wrong name or password.")
    sign_in(page, base, name)
    expect(page.locator("h1")).to_contain_text("429")
