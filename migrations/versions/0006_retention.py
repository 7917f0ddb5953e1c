"""Retention: how long each account's job files are kept (null: the server's default), when the
sweep removed a job's files (the job row stays and reports `data_removed`), and the size of every
stored file, so the admin System page can show each account's disk usage.

Files stored before this revision have no recorded size (null); the System page counts them
apart, as of unknown size, until retention removes them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("retention_days", sa.Float(), nullable=True))
    op.add_column("jobs", sa.Column("data_removed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("result_bytes", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("checkpoint_bytes", sa.BigInteger(), nullable=True))
    op.add_column("job_inputs", sa.Column("size_bytes", sa.BigInteger(), nullable=True))
    op.add_column("snapshots", sa.Column("size_bytes", sa.BigInteger(), nullable=True))
    op.create_index("ix_jobs_retention", "jobs", ["data_removed_at", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_retention", table_name="jobs")
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("size_bytes")
    with op.batch_alter_table("job_inputs") as batch:
        batch.drop_column("size_bytes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("checkpoint_bytes")
        batch.drop_column("result_bytes")
        batch.drop_column("data_removed_at")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("retention_days")
