"""A job's `job.started` and terminal webhook events exist once: two sweeps (or a sweep and the
worker) recording the same missed event at the same moment made two rows, and two deliveries.
A unique index on (job_id, type) for every type but `job.snapshot` makes the second insert fail,
and the outbox takes that as "already recorded".

Duplicates already recorded are removed first, keeping each job's earliest event of a type.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ONCE = "type != 'job.snapshot'"


def upgrade() -> None:
    op.execute(sa.text(
        "DELETE FROM webhook_events WHERE type != 'job.snapshot' AND EXISTS ("
        " SELECT 1 FROM webhook_events AS earlier WHERE earlier.job_id = webhook_events.job_id"
        " AND earlier.type = webhook_events.type AND (earlier.created_at < webhook_events.created_at"
        " OR (earlier.created_at = webhook_events.created_at AND earlier.id < webhook_events.id)))"))
    op.create_index("uq_webhook_events_job_type_once", "webhook_events", ["job_id", "type"], unique=True,
                    sqlite_where=sa.text(ONCE), postgresql_where=sa.text(ONCE))


def downgrade() -> None:
    op.drop_index("uq_webhook_events_job_type_once", table_name="webhook_events")
