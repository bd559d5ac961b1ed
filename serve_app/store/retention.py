"""Retention in the job store: finished jobs older than JOB_RETENTION_HOURS go, with their
events; what spooled audio is still needed. Calls are blocking: run them in a thread."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, and_, delete, or_, select

from serve_app.schemas import FINISHED
from serve_app.store.rows import now
from serve_app.store.tables import job_events, job_units, jobs


@dataclass(frozen=True)
class FinishedJob:
    """What retention removed: the caller deletes spooled audio it owned."""

    id: str
    audio_path: str
    spooled: bool


class RetentionStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def purge_finished(self, older_than: timedelta) -> list[FinishedJob]:
        """Delete jobs finished before the cutoff, with their events; webhooks still being
        delivered wait."""
        cutoff = now() - older_than
        condition = and_(
            jobs.c.status.in_(tuple(FINISHED)),
            jobs.c.finished_at < cutoff,
            or_(jobs.c.webhook_status.is_(None), jobs.c.webhook_status != "pending"),
        )
        with self._engine.begin() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.audio_path, jobs.c.spooled).where(condition)
            ).all()
            ids = [r.id for r in rows]
            if ids:
                conn.execute(delete(job_events).where(job_events.c.job_id.in_(ids)))
                conn.execute(delete(job_units).where(job_units.c.job_id.in_(ids)))
                conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
        return [FinishedJob(r.id, r.audio_path, bool(r.spooled)) for r in rows]

    def spooled_paths(self) -> set[str]:
        """Spooled audio of jobs that still need it (not finished)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.audio_path).where(
                    jobs.c.spooled.is_(True), jobs.c.status.not_in(tuple(FINISHED))
                )
            ).all()
        return {r.audio_path for r in rows}
