"""The System page's numbers: throughput, failure rate, median and p95 of run time and queue
wait over the last hour and day, on a database holding exactly the jobs below."""
from __future__ import annotations

from datetime import timedelta

import pytest

from api.admin.stats import all_windows
from shared import keys
from shared.db import Database
from shared.migrate import upgrade
from shared.models import Account, Job, utcnow


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'stats.db'}"
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def add_job(session, account_id: int, status: str, wait: float, run: float | None, ended_ago: timedelta) -> None:
    now = utcnow()
    finished = now - ended_ago
    started = finished - timedelta(seconds=run or 0)
    session.add(Job(account_id=account_id, status=status, params={}, request_hash="x", attempts=1,
                    created_at=started - timedelta(seconds=wait), started_at=started, finished_at=finished))


def test_windows_count_finished_jobs_rates_and_percentiles(db):
    with db.session() as session:
        keys.create_key(session, "stats")
        account = session.query(Account).filter_by(name="stats").one()
        for i in range(1, 21):  # succeeded in the last hour: runs 1..20 s, waits 0..19 s
            add_job(session, account.id, "succeeded", wait=i - 1, run=i, ended_ago=timedelta(minutes=10))
        add_job(session, account.id, "failed", wait=0, run=5, ended_ago=timedelta(minutes=5))
        add_job(session, account.id, "failed", wait=0, run=5, ended_ago=timedelta(minutes=5))
        add_job(session, account.id, "canceled", wait=0, run=5, ended_ago=timedelta(minutes=5))
        add_job(session, account.id, "succeeded", wait=50, run=100, ended_ago=timedelta(hours=3))
        session.add(Job(account_id=account.id, status="queued", params={}, request_hash="x", attempts=0))
        session.commit()
        hour, day = all_windows(session)
    assert (hour.name, hour.finished, hour.jobs_per_hour) == ("last hour", 23, 23.0)
    assert hour.failure_rate == pytest.approx(2 / 22)  # canceled is not a failure
    assert hour.run_median == pytest.approx(10.5) and hour.run_p95 == pytest.approx(19.05)
    waits = sorted([float(i) for i in range(20)] + [0.0] * 3)
    assert hour.wait_median == pytest.approx(waits[11]) and hour.wait_p95 > hour.wait_median
    assert (day.finished, day.jobs_per_hour) == (24, pytest.approx(1.0))
    assert day.run_median == pytest.approx(11) and day.run_p95 > hour.run_p95  # the 100 s job counts
    assert day.failure_rate == pytest.approx(2 / 23)


def test_empty_windows_have_no_numbers(db):
    with db.session() as session:
        hour, _ = all_windows(session)
    assert hour.finished == 0 and hour.failure_rate is None and hour.run_median is None and hour.wait_p95 is None
