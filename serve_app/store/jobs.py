"""The job store: every job from HTTP or AMQP, its state, result and events.

State changes are conditional updates ("running -> completed only if still running"), so a
cancel racing a completion, or two replicas racing over one job, leave one consistent answer.
Calls are blocking: run them in a thread from async code.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from serve_app.errors import JobNotFoundError, JobStateError
from serve_app.schemas import (
    FINISHED,
    Job,
    JobSource,
    JobStatus,
    ResponseFormat,
    TranscribeOptions,
    Transcript,
)
from serve_app.store.changes import JobChanges
from serve_app.store.claims import held_by
from serve_app.store.clock import DbClock
from serve_app.store.events import EventLog
from serve_app.store.rows import decode_cursor, encode_cursor, now, to_job
from serve_app.store.tables import job_events, jobs


@dataclass(frozen=True)
class NewJob:
    source: JobSource
    audio_path: str
    options: TranscribeOptions
    model: str
    spooled: bool = False
    filename: str | None = None
    callback_url: str | None = None
    idempotency_key: str | None = None
    external_id: str | None = None
    id: str | None = None
    status: JobStatus = "queued"
    owner: str | None = None
    audio_bytes: int | None = None
    response_format: ResponseFormat | None = None


@dataclass(frozen=True)
class Viewer:
    """Who reads or changes jobs: one API key's owner id sees its own jobs; ``everyone`` (admin
    keys, a service without keys, the service itself) sees all of them."""

    owner: str | None = None
    everyone: bool = True


EVERYONE = Viewer()


class JobStore(EventLog):
    def __init__(self, engine: Engine, changes: JobChanges | None = None) -> None:
        self._engine = engine
        self._clock = DbClock(engine)
        # Without a listener of the process's own, its waiters poll as before.
        self.changes = changes or JobChanges()

    @property
    def engine(self) -> Engine:
        """Shared with the other stores over the same database (webhooks, ledger)."""
        return self._engine

    # --- create and read ------------------------------------------------------------------------

    def create(self, new: NewJob) -> tuple[Job, bool]:
        """Insert a job; with an idempotency key already used, return that job instead.
        One transaction either way. Returns (job, created)."""
        job_id = new.id or uuid.uuid4().hex
        stamp = now()
        # The outbox compares acceptance with the database's clock: record it by that clock.
        accepted = self._clock.stamp()
        values: dict[str, Any] = {
            "id": job_id,
            "source": new.source,
            "status": new.status,
            "idempotency_key": new.idempotency_key,
            "external_id": new.external_id,
            "owner": new.owner,
            "audio_bytes": new.audio_bytes,
            "options": new.options.model_dump(mode="json"),
            "audio_path": new.audio_path,
            "filename": new.filename,
            "spooled": new.spooled,
            "model": new.model,
            "language": new.options.language,
            "callback_url": new.callback_url,
            "response_format": new.response_format,
            "attempts": 0,
            "processed_s": 0.0,
            "webhook_status": "pending" if new.callback_url else None,
            "webhook_attempts": [],
            # A Whisper-Local job arrives from the broker; an HTTP one is on its way once
            # published (the outbox: until then the sweeper may publish it).
            "enqueued_at": stamp if new.source == "amqp" else None,
            "created_at": accepted,
            "updated_at": stamp,
        }
        try:
            with self._writing() as conn:
                if new.idempotency_key is not None:
                    existing = self._by_key(conn, new.idempotency_key)
                    if existing is not None:
                        return existing, False
                conn.execute(insert(jobs).values(**values))
                self._event(conn, job_id, new.status, {"status": new.status})
                return self._read(conn, job_id), True
        except IntegrityError:
            # Two submissions with one key raced: the other one won.
            if new.idempotency_key is None:
                raise
            existing = self.find_by_idempotency_key(new.idempotency_key)
            if existing is None:
                raise
            return existing, False

    def get(self, job_id: str, with_result: bool = True, viewer: Viewer = EVERYONE) -> Job:
        """The job; JobNotFoundError also when it belongs to another key (its id is not
        confirmed to exist)."""
        with self._engine.connect() as conn:
            return self._read(conn, job_id, with_result, viewer)

    def find(self, job_id: str) -> Job | None:
        try:
            return self.get(job_id)
        except JobNotFoundError:
            return None

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 20,
        cursor: str | None = None,
        viewer: Viewer = EVERYONE,
    ) -> tuple[list[Job], str | None]:
        """Newest first; ``cursor`` continues after the last job of the previous page."""
        query = (
            select(jobs)
            .where(*_visible(viewer))
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        )
        if status is not None:
            query = query.where(jobs.c.status == status)
        if cursor is not None:
            created, last_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    jobs.c.created_at < created,
                    and_(jobs.c.created_at == created, jobs.c.id < last_id),
                )
            )
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(limit + 1)).mappings().all()
            positions = self._queue_positions(conn, rows[:limit])
            page = [to_job(r, False, positions.get(r["id"])) for r in rows[:limit]]
        more = len(rows) > limit
        return page, encode_cursor(page[-1]) if more and page else None

    # --- the life of a job ----------------------------------------------------------------------

    # Writes after a claim name its ``holder``: they change nothing once another delivery has
    # taken the job over, so a stale worker cannot overwrite the live one's work.

    def start(self, job_id: str, holder: str | None = None) -> Job | None:
        """queued -> running, counting the attempt, and the delivery as unfinished until an
        ending is recorded. None if the job is gone or finished (cancelled while queued, or
        already answered before a redelivery), or no longer ``holder``'s."""
        with self._writing() as conn:
            changed = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status.in_(("queued", "running")),
                    *held_by(holder),
                )
                .values(
                    status="running",
                    attempts=jobs.c.attempts + 1,
                    unfinished=jobs.c.unfinished + 1,
                    # By the clock its acceptance was recorded with (the queue wait).
                    started_at=func.coalesce(jobs.c.started_at, self._clock.stamp()),
                    updated_at=now(),
                )
            ).rowcount
            if not changed:
                return None
            job = self._read(conn, job_id)
            # A new attempt streams its segments again, numbered from 0.
            self._event(conn, job_id, "running", {"status": "running", "attempt": job.attempts})
        return job

    def complete(
        self,
        job_id: str,
        transcript: Transcript,
        holder: str | None = None,
        objects: dict[str, str] | None = None,
    ) -> Job | None:
        """The completed job, or None if it changed nothing (no longer ``holder``'s, or no
        longer running: cancelled meanwhile). ``objects``: where its results were written."""
        result = transcript.model_dump(mode="json")
        return self._finish(
            job_id,
            "completed",
            {
                "result": result,
                "language": transcript.language,
                "duration": transcript.duration,
                "processed_s": transcript.duration,
                "error": None,
                "result_objects": objects,
            },
            # The transcript stays on the row only; events_after adds it to this event.
            {"status": "completed"},
            holder=holder,
        )

    def fail(self, job_id: str, error: str, holder: str | None = None) -> Job | None:
        return self._finish(
            job_id,
            "failed",
            {"error": error},
            {"status": "failed", "error": error},
            from_states=("queued", "running"),
            holder=holder,
        )

    def requeue(self, job_id: str, error: str, holder: str | None = None) -> bool:
        """A retryable failure: back to queued until the retry arrives."""
        with self._writing() as conn:
            changed = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == "running", *held_by(holder))
                .values(status="queued", error=error, unfinished=0, updated_at=now())
            ).rowcount
            if changed:
                self._event(conn, job_id, "queued", {"status": "queued", "retry_after": error})
        return bool(changed)

    def give_back(self, job_id: str, holder: str, why: str) -> bool:
        """A delivery stopped in order (shutdown, a lost channel, a wait for room) before the
        job ended: back to queued, and the attempt it started is not counted, neither as an
        attempt nor as a delivery whose worker died."""
        with self._writing() as conn:
            changed = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == "running", *held_by(holder))
                .values(
                    status="queued",
                    attempts=case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
                    unfinished=case((jobs.c.unfinished > 0, jobs.c.unfinished - 1), else_=0),
                    updated_at=now(),
                )
            ).rowcount
            if changed:
                self._event(conn, job_id, "queued", {"status": "queued", "requeued": why})
        return bool(changed)

    def cancel(self, job_id: str, viewer: Viewer = EVERYONE) -> Job:
        """queued or running -> cancelled at once; a running job stops at its next chunk."""
        self.get(job_id, with_result=False, viewer=viewer)  # 404 for another key's job
        done = self._finish(
            job_id,
            "cancelled",
            {"error": "Cancelled by request"},
            {"status": "cancelled"},
            from_states=("queued", "running"),
        )
        job = self.get(job_id)
        if not done:
            raise JobStateError(f"Job {job_id} is already {job.status}; it cannot be cancelled")
        return job

    def usage(self, owner: str | None) -> tuple[int, int]:
        """(unfinished HTTP jobs, bytes of audio they keep spooled) of one owner."""
        with self._engine.connect() as conn:
            count, spooled = conn.execute(
                select(func.count(), func.coalesce(func.sum(jobs.c.audio_bytes), 0)).where(
                    jobs.c.source == "http",
                    jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner,
                    jobs.c.status.not_in(tuple(FINISHED)),
                )
            ).one()
        return int(count), int(spooled)

    def status(self, job_id: str) -> JobStatus | None:
        with self._engine.connect() as conn:
            value = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        return None if value is None else cast(JobStatus, value)

    def _finish(
        self,
        job_id: str,
        status: JobStatus,
        values: dict[str, Any],
        event: dict[str, Any],
        from_states: tuple[str, ...] = ("running",),
        holder: str | None = None,
    ) -> Job | None:
        """The job as it ended, or None if it changed nothing."""
        stamp = now()
        # Due at once by the database's clock, which the webhook claims compare with.
        due = self._clock.now()
        with self._writing() as conn:
            row = (
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status.in_(from_states), *held_by(holder))
                    .values(
                        status=status, finished_at=stamp, updated_at=stamp, unfinished=0, **values
                    )
                    .values(
                        webhook_next_at=case((jobs.c.callback_url.is_not(None), due), else_=None)
                    )
                    .returning(*jobs.c)
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            self._event(conn, job_id, status, event)
            if row["callback_url"] is not None:
                self._changed(conn, job_id, "callback")  # a webhook is due
        return to_job(row, True, None)

    def delete(self, job_id: str) -> None:
        """Forget a job that was never queued (the broker refused it)."""
        with self._engine.begin() as conn:
            conn.execute(delete(job_events).where(job_events.c.job_id == job_id))
            conn.execute(delete(jobs).where(jobs.c.id == job_id))

    # --- helpers --------------------------------------------------------------------------------

    def find_by_idempotency_key(self, key: str) -> Job | None:
        with self._engine.connect() as conn:
            return self._by_key(conn, key)

    def _by_key(self, conn: Connection, key: str) -> Job | None:
        job_id = conn.execute(select(jobs.c.id).where(jobs.c.idempotency_key == key)).scalar()
        return None if job_id is None else self._read(conn, job_id)

    def _read(
        self, conn: Connection, job_id: str, with_result: bool = True, viewer: Viewer = EVERYONE
    ) -> Job:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id, *_visible(viewer)))
        found = row.mappings().first()
        if found is None:
            raise JobNotFoundError(f"No job with id '{job_id}'")
        return to_job(found, with_result, self._queue_positions(conn, [found]).get(job_id))

    @staticmethod
    def _queue_positions(conn: Connection, rows: Sequence[RowMapping]) -> dict[str, int]:
        """Each queued row's place in its owner's queue, 1 for the owner's next job (other
        keys' queues are not this owner's to count): one statement for a whole page, each
        count made by the database."""
        queued = [r["id"] for r in rows if r["status"] == "queued"]
        if not queued:
            return {}
        ahead = jobs.alias("ahead")
        same_owner = ahead.c.owner.is_not_distinct_from(jobs.c.owner)  # keyless jobs: NULL
        earlier = (
            select(func.count())
            .select_from(ahead)
            .where(ahead.c.status == "queued", same_owner, ahead.c.created_at < jobs.c.created_at)
            .scalar_subquery()
        )
        found = conn.execute(select(jobs.c.id, earlier).where(jobs.c.id.in_(queued)))
        return {job_id: int(count) + 1 for job_id, count in found}


def _visible(viewer: Viewer) -> list[Any]:
    return [] if viewer.everyone else [jobs.c.owner == viewer.owner]
