"""Admin dashboard: operator accounts, the loss history a running job writes with its progress,
and the API key that submitted each job (for per-key job counts).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "operators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("last_sign_in_at", when, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operators")),
        sa.UniqueConstraint("name", name=op.f("uq_operators_name")),
    )
    op.create_table(
        "loss_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("losses", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_loss_points_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loss_points")),
    )
    op.create_index("ix_loss_points_job_iteration", "loss_points", ["job_id", "iteration"])
    # no foreign key (see shared.models.Job.api_key_id): SQLite would need a table rebuild for one
    op.add_column("jobs", sa.Column("api_key_id", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_jobs_api_key_id"), "jobs", ["api_key_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_api_key_id"), table_name="jobs")
    op.drop_column("jobs", "api_key_id")
    op.drop_index("ix_loss_points_job_iteration", table_name="loss_points")
    op.drop_table("loss_points")
    op.drop_table("operators")
