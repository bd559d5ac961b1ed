"""Results written back to object storage: the format a job asked for, and where its
transcript and JSON copy were written.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: SQLite adds columns only through a table copy.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("response_format", sa.String(16)))
        batch.add_column(sa.Column("result_objects", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_objects")
        batch.drop_column("response_format")
