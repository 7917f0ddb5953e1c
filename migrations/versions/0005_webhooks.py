"""Webhooks: a job's webhook URL and events, per-key signing secrets, the event outbox and the
log of every delivery attempt.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.add_column("api_keys", sa.Column("webhook_secret", sa.String(length=64), nullable=True))
    op.add_column("api_keys", sa.Column("previous_webhook_secret", sa.String(length=64), nullable=True))
    op.add_column("api_keys", sa.Column("previous_webhook_secret_expires_at", when, nullable=True))
    op.add_column("jobs", sa.Column("webhook_url", sa.String(length=2048), nullable=True))
    op.add_column("jobs", sa.Column("webhook_events", sa.JSON(), nullable=True))
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", when, nullable=True),
        sa.Column("dispatched_at", when, nullable=True),
        sa.Column("leased_until", when, nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_webhook_events_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
    )
    op.create_index("ix_webhook_events_job_created", "webhook_events", ["job_id", "created_at"])
    op.create_index("ix_webhook_events_status_next", "webhook_events", ["status", "next_attempt_at"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("started_at", when, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["webhook_events.id"], name=op.f("fk_webhook_attempts_event_id_webhook_events"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
        sa.UniqueConstraint("event_id", "number", name="uq_webhook_attempts_event_number"),
    )


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_events_status_next", table_name="webhook_events")
    op.drop_index("ix_webhook_events_job_created", table_name="webhook_events")
    op.drop_table("webhook_events")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("webhook_events")
        batch.drop_column("webhook_url")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("previous_webhook_secret_expires_at")
        batch.drop_column("previous_webhook_secret")
        batch.drop_column("webhook_secret")
