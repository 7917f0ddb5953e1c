"""Races between concurrent requests, each forced with a real transaction held at its racy point
(`faults.hold_inserts`) while a concurrent request runs against it."""
from __future__ import annotations

import threading
import uuid
from dataclasses import replace

from sqlalchemy import func, select

from shared import keys
from shared.models import ACTIVE, Account, Job
from shared.storage import input_key, sha256
from tests.service import faults
from tests.service.helpers import TERMINAL, bearer, new_key, submit, wait_for, wait_status

TINY = {"size": 32, "iterations": 2, "scales": 1, "snapshot_every": 0}


def in_thread(target) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.append(target()))
    thread.start()
    return thread, results


def test_deleting_a_job_while_its_images_are_uploaded_again_keeps_them(live_app, live_client, live_auth, images):
    """Job A used an image; job B uploads the same bytes. Before the fix, B found the image
    stored and skipped writing it, then A's delete (running before B's insert was committed)
    saw no other job using the image and removed it: B committed a job whose input was gone and
    its worker failed it `input_missing` (this test failed so). Now B holds the image's lock from
    its check to its commit, and the delete waits for it, then sees B's job and keeps the image."""
    first = submit(live_client, live_auth, images, TINY).get_json()
    assert wait_status(live_client, live_auth, first["id"], TERMINAL)["status"] == "succeeded"
    engine = live_app.extensions["atelier"].db.engine
    with faults.hold_inserts(engine, "jobs", timeout=3.0) as gate:
        thread, second = in_thread(lambda: submit(live_app.test_client(), live_auth, images, TINY))
        wait_for(lambda: gate.held, timeout=30, what="the second submission to reach its insert")
        assert live_client.delete(f"/v1/jobs/{first['id']}", headers=live_auth).status_code == 204
        gate.release()
        thread.join(60)
    assert second[0].status_code == 202, second[0].get_json()
    done = wait_status(live_client, live_auth, second[0].get_json()["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    storage = live_app.extensions["atelier"].storage
    assert storage.exists(input_key(sha256(images["content"]))) and storage.exists(input_key(sha256(images["style"])))


def test_simultaneous_submissions_never_exceed_the_active_job_cap(settings, images, make_app):
    """Five submissions at once against an account cap of two. Before the fix each counted the
    account's active jobs (none), then inserted: all five were accepted (this test failed so).
    Now counting and inserting happen under the account's lock: two are accepted, three get 429."""
    capped = replace(settings, max_active_jobs=2)
    app = make_app(capped)
    auth = bearer(new_key(capped))
    engine = app.extensions["atelier"].db.engine
    with faults.hold_inserts(engine, "jobs", parties=5, timeout=2.0):
        attempts = [in_thread(lambda: submit(app.test_client(), auth, images, TINY)) for _ in range(5)]
        for thread, _ in attempts:
            thread.join(120)
    statuses = sorted(results[0].status_code for _, results in attempts)
    assert statuses == [202, 202, 429, 429, 429], statuses
    accepted = [results[0].get_json()["id"] for _, results in attempts if results[0].status_code == 202]
    with app.extensions["atelier"].db.session() as session:
        accounts = set(session.scalars(select(Job.account_id).where(Job.id.in_(accepted))))
        (account,) = accounts
        active = session.scalar(select(func.count()).select_from(Job).where(
            Job.account_id == account, Job.status.in_([s.value for s in ACTIVE])))
    assert active == 2


def test_two_first_keys_of_a_new_account_at_once_make_one_account(settings, make_app):
    """Two operators create the first key of one new account at once (the admin Keys page,
    `atelier keys create`). Before the fix both found no account and inserted it: the second
    insert broke the unique name, an IntegrityError and a 500 (this test failed so). Now the
    name's lock makes the second wait, then find the account: two keys of one account."""
    db = make_app(settings).extensions["atelier"].db
    name = f"racer-{uuid.uuid4().hex[:8]}"

    def create() -> str:
        with db.session() as session:
            return keys.create_key(session, name)

    with faults.hold_inserts(db.engine, "accounts", parties=2, timeout=2.0):
        attempts = [in_thread(create) for _ in range(2)]
        for thread, _ in attempts:
            thread.join(60)
    tokens = [token for _, results in attempts for token in results]  # a thread that raised has none
    assert len(tokens) == 2
    with db.session() as session:
        assert len({keys.live_key(session, token).account_id for token in tokens}) == 1
        assert session.scalar(select(func.count()).select_from(Account).where(Account.name == name)) == 1
