"""Checkpoints of long jobs: each unit of a long file is stored when it finishes, so a retry
or a redelivery redoes only the units not done yet. Calls are blocking: run them in a thread."""

from __future__ import annotations

from sqlalchemy import Engine, exists, insert, literal, null, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.schemas import Transcript
from serve_app.store.claims import held_by
from serve_app.store.rows import now
from serve_app.store.tables import job_units, jobs

Span = tuple[int, int]  # (start, end) in samples of the decoded file


class UnitStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def done(self, job_id: str) -> dict[Span, Transcript]:
        query = select(job_units).where(
            job_units.c.job_id == job_id, job_units.c.result.is_not(None)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return {
            (r["start_sample"], r["end_sample"]): Transcript.model_validate(r["result"])
            for r in rows
        }

    def save(
        self,
        job_id: str,
        span: Span,
        attempt: int,
        transcript: Transcript,
        holder: str | None = None,
    ) -> bool:
        """Record a finished unit; with ``holder``, only while that delivery holds the job's
        claim (a stale delivery's late unit is not kept). False when nothing was recorded."""
        values = {
            "job_id": job_id,
            "start_sample": span[0],
            "end_sample": span[1],
            "attempt": attempt,
            "result": transcript.model_dump(mode="json"),
            "created_at": now(),
        }
        # One statement: the unit goes in only if the claim is the holder's as it is written.
        row = select(*(literal(v, job_units.c[k].type).label(k) for k, v in values.items())).where(
            exists().where(jobs.c.id == job_id, *held_by(holder))
        )
        # RETURNING, not rowcount: psycopg gives no count for an INSERT from a SELECT.
        statement = insert(job_units).from_select(list(values), row).returning(job_units.c.job_id)
        try:
            with self._engine.begin() as conn:
                return conn.execute(statement).first() is not None
        except IntegrityError:
            return False  # done already by an earlier attempt: the first record stands

    def attempts(self, job_id: str) -> list[tuple[Span, int]]:
        """Which attempt transcribed each unit, in order (what a resume redid)."""
        query = (
            select(job_units.c.start_sample, job_units.c.end_sample, job_units.c.attempt)
            .where(job_units.c.job_id == job_id)
            .order_by(job_units.c.start_sample)
        )
        with self._engine.connect() as conn:
            return [((r[0], r[1]), r[2]) for r in conn.execute(query).all()]

    def drop_results(self, job_id: str) -> None:
        """The job is finished: its result holds the text, the units only their record."""
        with self._engine.begin() as conn:
            # SQL NULL, not a JSON null: done() selects on it.
            conn.execute(
                update(job_units).where(job_units.c.job_id == job_id).values(result=null())
            )
