"""The ledger of published AMQP results.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Databases from before migrations already hold this table (created by create_all).
    if sa.inspect(op.get_bind()).has_table("published_results"):
        return
    op.create_table(
        "published_results",
        sa.Column("job_key", sa.String(64), primary_key=True),
        sa.Column("attachment_id", sa.BigInteger, nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("success", sa.Boolean, nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_published_results_published_at", "published_results", ["published_at"])


def downgrade() -> None:
    op.drop_table("published_results")
