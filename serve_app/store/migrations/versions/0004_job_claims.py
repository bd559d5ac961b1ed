"""Claims, delivery counts, the submit outbox and checkpoints of long jobs.

- ``lease_owner``/``lease_until``: the replica working on a job (a delivery of it) right now;
  another delivery of the same job waits for the lease instead of running it twice.
- ``unfinished``: deliveries that started the job and never recorded how it ended (the worker
  died); past a bound the job gets one error result instead of another crash.
- ``enqueued_at``: when an accepted HTTP job was confirmed on the broker; a job left without it
  (the Gateway died between the two) is published by the sweeper.
- ``job_units``: each finished unit of a long file, so a retry redoes only the others.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

jobs = sa.table(
    "jobs", sa.column("enqueued_at", sa.DateTime(timezone=True)), sa.column("created_at")
)


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(64)))
        batch.add_column(sa.Column("lease_until", when))
        batch.add_column(sa.Column("unfinished", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("enqueued_at", when))
    # Jobs from before the outbox were published when they were accepted.
    op.get_bind().execute(sa.update(jobs).values(enqueued_at=jobs.c.created_at))
    op.create_table(
        "job_units",
        sa.Column(
            "job_id",
            sa.String(64),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("start_sample", sa.BigInteger, primary_key=True),
        sa.Column("end_sample", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("result", sa.JSON),
        sa.Column("created_at", when, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_units")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("enqueued_at")
        batch.drop_column("unfinished")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
