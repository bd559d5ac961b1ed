"""Claims on jobs: one delivery works on a job at a time, across replicas and lanes.

A claim is a lease (holder, expiry) taken by a conditional update keyed by the job id, so two
copies of one job (a producer's duplicate, a retry copy beside a redelivered original) never
run at once; the second waits and then finds the job finished. A holder that dies stops
renewing, and its lease runs out. Calls are blocking: run them in a thread from async code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import ColumnElement, Engine, or_, select, update

from serve_app.schemas import JobStatus
from serve_app.store.clock import DbClock
from serve_app.store.rows import aware
from serve_app.store.tables import jobs


@dataclass(frozen=True)
class Claim:
    job_id: str
    holder: str
    status: JobStatus
    # Deliveries that started this job and never recorded how it ended: each one's worker died.
    unfinished: int
    source: str = "amqp"  # http | amqp, for the metrics and logs of its run
    external_id: str | None = None  # an AMQP job's attachment_id
    owner: str | None = None  # the key that made it (an owner id), for fair shares


@dataclass(frozen=True)
class Busy:
    """Another holder's lease is live; it ends at the latest after ``wait_s``."""

    wait_s: float
    holder: str | None = None
    # The lease's end as written (by the database's clock): a later value from the same holder
    # means it renewed, so it is alive.
    until: datetime | None = None


class ClaimStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._clock = DbClock(engine)

    def claim(self, job_id: str, holder: str, lease_s: float) -> Claim | Busy | None:
        """Take the job's lease if it is free, expired, or already ours. None: no such job.

        Expiry is judged by the database's clock, never this node's."""
        clock = self._clock
        with self._engine.begin() as conn:
            taken = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    or_(
                        jobs.c.lease_owner.is_(None),
                        jobs.c.lease_until < clock.now(),
                        jobs.c.lease_owner == holder,
                    ),
                )
                .values(lease_owner=holder, lease_until=clock.later(lease_s))
            ).rowcount
            row = conn.execute(
                select(
                    jobs.c.status,
                    jobs.c.unfinished,
                    jobs.c.lease_owner,
                    jobs.c.lease_until,
                    clock.seconds_until(jobs.c.lease_until).label("left_s"),
                    jobs.c.source,
                    jobs.c.external_id,
                    jobs.c.owner,
                ).where(jobs.c.id == job_id)
            ).first()
        if row is None:
            return None
        if not taken:
            left = float(row.left_s) if row.left_s is not None else 0.0
            return Busy(max(left, 0.0), row.lease_owner, aware(row.lease_until))
        return Claim(
            job_id,
            holder,
            cast(JobStatus, row.status),
            int(row.unfinished or 0),
            row.source,
            row.external_id,
            row.owner,
        )

    def renew(self, job_id: str, holder: str, lease_s: float) -> bool:
        """Extend our lease; False when it is no longer ours (it ran out and was taken)."""
        with self._engine.begin() as conn:
            return bool(
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.lease_owner == holder)
                    .values(lease_until=self._clock.later(lease_s))
                ).rowcount
            )

    def holds(self, job_id: str, holder: str) -> bool:
        """Whether ``holder`` still holds the job's claim."""
        with self._engine.connect() as conn:
            owner = conn.execute(select(jobs.c.lease_owner).where(jobs.c.id == job_id)).scalar()
        return owner == holder

    def release(self, job_id: str, holder: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.lease_owner == holder)
                .values(lease_owner=None, lease_until=None)
            )


def held_by(holder: str | None) -> list[ColumnElement[bool]]:
    """The condition that fences a write after a claim: the job is still ``holder``'s (no
    condition for writes made without a claim: a cancel, a submit)."""
    return [] if holder is None else [jobs.c.lease_owner == holder]
