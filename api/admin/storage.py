"""Disk usage per account, from the sizes recorded in SQL as files are written (no walk over
storage), and each account's retention setting: both shown on the System page, where the
retention is set too.

An account's usage counts its jobs' results, snapshots and checkpoints, and each input image
its jobs with files use (once per account, however many of its jobs use it; an image shared by
two accounts counts for both, and once in the total). Files stored before sizes were recorded
(migration 0006) are counted apart, as of unknown size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from flask import Response, abort, flash, redirect, request, url_for
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from api.app import services
from api.admin.blueprint import bp
from shared import retention
from shared.models import Account, Job, JobInput, Snapshot

MAX_RETENTION_DAYS = 36500


@dataclass
class AccountUsage:
    id: int
    name: str
    retention_days: float | None     # None: the server's default
    jobs: int = 0
    jobs_with_files: int = 0
    bytes: int = 0
    unknown_files: int = 0


def human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _unknown(key, size) -> object:
    return func.coalesce(func.sum(case((and_(key.is_not(None), size.is_(None)), 1), else_=0)), 0)


def usage(db: Session) -> tuple[list[AccountUsage], int]:
    """Every account's usage, largest first, and the bytes stored in all (shared inputs once)."""
    accounts = {a.id: AccountUsage(a.id, a.name, a.retention_days) for a in db.scalars(select(Account))}
    for account_id, jobs, removed, stored, unknown in db.execute(
            select(Job.account_id, func.count(), func.count(Job.data_removed_at),
                   func.coalesce(func.sum(Job.result_bytes), 0) + func.coalesce(func.sum(Job.checkpoint_bytes), 0),
                   _unknown(Job.result_key, Job.result_bytes) + _unknown(Job.checkpoint_key, Job.checkpoint_bytes))
            .group_by(Job.account_id)):
        row = accounts[account_id]
        row.jobs, row.jobs_with_files, row.bytes, row.unknown_files = jobs, jobs - removed, stored, unknown
    for account_id, stored, unknown in db.execute(
            select(Job.account_id, func.coalesce(func.sum(Snapshot.size_bytes), 0), _unknown(Snapshot.key, Snapshot.size_bytes))
            .join(Job, Job.id == Snapshot.job_id).group_by(Job.account_id)):
        accounts[account_id].bytes += stored
        accounts[account_id].unknown_files += unknown
    used = (select(Job.account_id, JobInput.sha256, func.max(JobInput.size_bytes).label("size"))
            .join(Job, Job.id == JobInput.job_id).where(Job.data_removed_at.is_(None))
            .group_by(Job.account_id, JobInput.sha256).subquery())
    for account_id, stored, unknown in db.execute(
            select(used.c.account_id, func.coalesce(func.sum(used.c.size), 0), _unknown(used.c.sha256, used.c.size))
            .group_by(used.c.account_id)):
        accounts[account_id].bytes += stored
        accounts[account_id].unknown_files += unknown
    inputs = select(JobInput.sha256, func.max(JobInput.size_bytes).label("size")).join(Job, Job.id == JobInput.job_id) \
        .where(Job.data_removed_at.is_(None)).group_by(JobInput.sha256).subquery()
    shared_inputs = db.scalar(select(func.coalesce(func.sum(inputs.c.size), 0)))
    used_inputs = db.scalar(select(func.coalesce(func.sum(used.c.size), 0)))
    total = sum(a.bytes for a in accounts.values()) - used_inputs + shared_inputs
    return sorted(accounts.values(), key=lambda a: (-a.bytes, a.name)), total


@bp.post("/accounts/<int(max=2147483647):account_id>/retention")
def set_retention(account_id: int) -> Response:
    """Days the account's job files are kept after the job ended (0: for ever); empty: the server's default."""
    raw = request.form.get("retention_days", "").strip()
    days: float | None = None
    if raw:
        try:
            days = float(raw)
        except ValueError:
            days = math.nan
        if not (0 <= days <= MAX_RETENTION_DAYS):
            abort(400, f"Retention must be a number of days from 0 (keep for ever) to {MAX_RETENTION_DAYS}, "
                       "or empty for the server's default.")
    with services().db.session() as db:
        name = retention.set_days(db, account_id, days)
    if name is None:
        abort(404, f"There is no account {account_id}.")
    default = services().settings.retention_days
    flash(f"{name}: job files are kept {_describe(days, default)}.")
    return redirect(url_for("admin.system"), 303)


def _describe(days: float | None, default: float) -> str:
    if days is None:
        return f"as the server's default says ({_describe(default, default)})"
    return "for ever" if days == 0 else f"{days:g} days after a job ends"
