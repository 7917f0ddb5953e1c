"""A job's predicted run time and peak device memory (`shared.capacity`), made at submission for
the device kind of the live workers: the queued job's ETA. Null for jobs made before this
revision or while no worker was live. And its batch key (`shared.params.batch_key`): a worker
running a job claims queued jobs of the same key to run with it as one batch (indexed with the
status for that query); null for older jobs, which run alone.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("prediction", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("batch_key", sa.String(32), nullable=True))
    op.create_index("ix_jobs_batch", "jobs", ["status", "batch_key"])


def downgrade() -> None:
    op.drop_index("ix_jobs_batch", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("batch_key")
        batch.drop_column("prediction")
