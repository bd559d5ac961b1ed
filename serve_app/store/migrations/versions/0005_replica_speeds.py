"""Each model replica's measured speed, for backlog estimates and admission.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replica_speeds",
        sa.Column("replica", sa.String(128), primary_key=True),
        sa.Column("pool", sa.String(100), nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("rate", sa.Float),
        sa.Column("busy", sa.Boolean, nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("replica_speeds")
