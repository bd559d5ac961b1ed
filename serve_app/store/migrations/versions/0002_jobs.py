"""Jobs from HTTP and AMQP, and the events their streams replay.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("idempotency_key", sa.String(255), unique=True),
        sa.Column("external_id", sa.String(64)),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("audio_path", sa.Text, nullable=False),
        sa.Column("filename", sa.String(255)),
        sa.Column("spooled", sa.Boolean, nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("language", sa.String(16)),
        sa.Column("callback_url", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("duration", sa.Float),
        sa.Column("processed_s", sa.Float, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("result", sa.JSON),
        sa.Column("webhook_status", sa.String(16)),
        sa.Column("webhook_attempts", sa.JSON),
        sa.Column("webhook_next_at", when),
        sa.Column("created_at", when, nullable=False),
        sa.Column("started_at", when),
        sa.Column("finished_at", when),
        sa.Column("updated_at", when, nullable=False),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    op.create_index("ix_jobs_webhook_next_at", "jobs", ["webhook_next_at"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE")),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", when, nullable=False),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])


def downgrade() -> None:
    op.drop_table("job_events")
    op.drop_table("jobs")
