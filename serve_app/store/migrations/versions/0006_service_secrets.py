"""Secrets the service makes for itself, shared by every replica through the store: the key of
the HMAC that turns an API key into its owner id.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "service_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
    )
    # Made once, here, under the migration lock: replicas starting together read the same one.
    op.bulk_insert(table, [{"name": "owner_ids", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("service_secrets")
