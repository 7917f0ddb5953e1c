"""How a succeeded job ran: the worker, its device and the precision, the run's seconds and peak
memory, and the size of the batch it ran in. Set against the prediction of 0008, it shows
operators how well the capacity model holds on their fleet, and clients what `precision auto`
chose. Null for jobs that ended before this revision.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("result_run", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_run")
