"""Checkpoints of long jobs: each unit of a long file is stored when it finishes, so a retry
or a redelivery redoes only the units not done yet. Calls are blocking: run them in a thread."""

from __future__ import annotations

from sqlalchemy import Engine, null, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.schemas import Transcript
from serve_app.store.rows import now
from serve_app.store.tables import job_units

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

    def save(self, job_id: str, span: Span, attempt: int, transcript: Transcript) -> None:
        values = {
            "job_id": job_id,
            "start_sample": span[0],
            "end_sample": span[1],
            "attempt": attempt,
            "result": transcript.model_dump(mode="json"),
            "created_at": now(),
        }
        try:
            with self._engine.begin() as conn:
                conn.execute(job_units.insert().values(**values))
        except IntegrityError:
            pass  # done already by an earlier attempt: the first record stands

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
