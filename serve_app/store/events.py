"""A job's events (queued, running, progress, segment, then its ending): what SSE streams.

The transcript is kept once, on the job's row: a ``completed`` event is stored without it and
handed out with it (``events_after``), so streams still carry the result. Events of a running
job that come together are written in one transaction (``record_events``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection

from serve_app.schemas import FINISHED, JobEvent
from serve_app.store.changes import JobChanges, Kind, notify
from serve_app.store.claims import held_by
from serve_app.store.rows import now
from serve_app.store.tables import job_events, jobs

# ("progress", (done_s, total_s)) or ("segments", [segment event data, ...])
EventItem = tuple[Literal["progress", "segments"], Any]
_PENDING = "job_changes"  # on a connection's info: the changes its transaction made


class EventLog:
    """The job store's events; ``JobStore`` is one (it shares its engine)."""

    _engine: Engine
    changes: JobChanges

    def events_after(self, job_id: str, after: int = 0) -> list[JobEvent]:
        query = (
            select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.id > after)
            .order_by(job_events.c.id)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            events = [JobEvent(id=r["id"], type=r["type"], data=r["data"]) for r in rows]
            if any(e.type == "completed" and "result" not in e.data for e in events):
                result = conn.execute(select(jobs.c.result).where(jobs.c.id == job_id)).scalar()
                for event in events:
                    if event.type == "completed" and "result" not in event.data:
                        event.data = {**event.data, "result": result}
        return events

    def record_progress(
        self, job_id: str, done_s: float, total_s: float, holder: str | None = None
    ) -> None:
        """With nothing done yet, only the duration is recorded (for the backlog): no event."""
        self.record_events(job_id, [("progress", (done_s, total_s))], holder)

    def record_segments(
        self, job_id: str, segments: list[dict[str, Any]], holder: str | None = None
    ) -> None:
        self.record_events(job_id, [("segments", segments)], holder)

    def record_events(
        self, job_id: str, items: Sequence[EventItem], holder: str | None = None
    ) -> None:
        """Progress and segments of a running job, in order, in one transaction. Late ones
        from cancelled work (or from a delivery that lost the job) are dropped, so a finished
        job's last event stays its last."""
        with self._writing() as conn:
            # The row lock orders these events before a concurrent ending's.
            running = conn.execute(
                select(jobs.c.id)
                .where(jobs.c.id == job_id, jobs.c.status == "running", *held_by(holder))
                .with_for_update()
            ).first()
            if running is None:
                return
            rows: list[dict[str, Any]] = []
            length: tuple[float, float] | None = None  # (done, total) as last reported
            for kind, payload in items:
                if kind == "segments":
                    rows += [_row(job_id, "segment", segment) for segment in payload]
                    continue
                length = done_s, total_s = payload
                if done_s > 0:
                    progress = round(min(done_s / total_s, 1.0), 4) if total_s > 0 else 0.0
                    data = {"processed_seconds": round(done_s, 3), "duration": total_s}
                    rows.append(_row(job_id, "progress", {**data, "progress": progress}))
            if length is not None:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(processed_s=length[0], duration=length[1], updated_at=now())
                )
            if rows:
                conn.execute(insert(job_events), rows)  # one statement, in order
                self._changed(conn, job_id, "changed")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A transaction whose changes wake this process's waiters once it has committed
        (and, through NOTIFY, every other process's)."""
        with self._engine.begin() as conn:
            try:
                yield conn
            finally:
                pending: set[tuple[str, Kind]] = conn.info.pop(_PENDING, set())
        for job_id, kind in pending:
            self.changes.changed(job_id, kind)

    @classmethod
    def _event(cls, conn: Connection, job_id: str, kind: str, data: dict[str, Any]) -> None:
        conn.execute(insert(job_events).values(**_row(job_id, kind, data)))
        cls._changed(conn, job_id, "finished" if kind in FINISHED else "changed")

    @staticmethod
    def _changed(conn: Connection, job_id: str, kind: Kind) -> None:
        """Within ``_writing``: tell the waiters on ``job_id`` once this commits (once per
        transaction for each kind of change)."""
        pending = conn.info.setdefault(_PENDING, set())
        if (job_id, kind) not in pending:
            notify(conn, kind, job_id)
            pending.add((job_id, kind))


def _row(job_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": job_id, "type": kind, "data": data, "created_at": now()}
