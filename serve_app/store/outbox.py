"""The outbox of accepted HTTP jobs: a job row is committed before its message is published,
so a Gateway that dies (or a client that hangs up) between the two leaves a job the sweeper
publishes. A job published twice runs once: its claim sees to that. Blocking calls."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, select, update

from serve_app.store.clock import DbClock
from serve_app.store.rows import now
from serve_app.store.tables import jobs


class Outbox:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._clock = DbClock(engine)

    def mark_enqueued(self, job_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.enqueued_at.is_(None))
                .values(enqueued_at=now())
            )

    def unsent(self, older_than: timedelta, limit: int = 100) -> list[str]:
        """Queued HTTP jobs never confirmed on the broker, accepted before the cutoff."""
        query = (
            select(jobs.c.id)
            .where(
                jobs.c.enqueued_at.is_(None),
                jobs.c.status == "queued",
                jobs.c.created_at < self._clock.later(-older_than.total_seconds()),
            )
            .order_by(jobs.c.created_at)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [r[0] for r in conn.execute(query).all()]
