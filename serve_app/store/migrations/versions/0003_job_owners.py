"""Jobs belong to the API key that made them; uploads record their size for per-key quotas.

Client idempotency keys are stored scoped to their owner (``http:<owner>:<sha256>``), so they
can neither reach another key's job nor collide with the internal ``amqp:<hash>`` keys.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

jobs = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("source", sa.String),
    sa.column("idempotency_key", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(64)))
        batch.add_column(sa.Column("audio_bytes", sa.BigInteger))
        batch.create_index("ix_jobs_owner", ["owner"])
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(jobs.c.id, jobs.c.idempotency_key).where(
            jobs.c.source == "http", jobs.c.idempotency_key.is_not(None)
        )
    ).all()
    for job_id, key in rows:
        # Jobs from before owners were made without an API key in mind: the keyless owner.
        scoped = "http:-:" + hashlib.sha256(key.encode()).hexdigest()
        connection.execute(
            sa.update(jobs).where(jobs.c.id == job_id).values(idempotency_key=scoped)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_owner")
        batch.drop_column("audio_bytes")
        batch.drop_column("owner")
