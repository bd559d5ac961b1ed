"""What a running job needs around the work: its events written in order, a stop when it is
cancelled from any replica, and its finished units kept for a retry. The runner
(``serve_app.jobs.runner``) puts these together."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from serve_app.errors import JobCancelledError
from serve_app.schemas import Segment, Transcript
from serve_app.store import JobStore, UnitStore
from serve_app.store.events import EventItem
from serve_app.transcription.port import Span

logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY = "retry"
    SKIPPED = "skipped"  # answered before (outcome handed on again if needed), or deleted
    # The service had no room for it now (its own limit): it comes again, its attempt unused.
    DEFERRED = "deferred"


@dataclass
class EventWriter:
    """Progress and segment callbacks come from the event loop and must not block it: they are
    written to the store in order by one background task."""

    store: JobStore
    job_id: str
    holder: str | None = None  # the delivery's claim: once another holds it, nothing is written
    # How long the first report (the job's length, no event) may wait for the next ones.
    hold_start_s: float = 5.0
    _queue: asyncio.Queue[EventItem | None] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> EventWriter:
        self._task = asyncio.create_task(self._write())
        return self

    def progress(self, done_s: float, total_s: float) -> None:
        self._queue.put_nowait(("progress", (done_s, total_s)))
        self._arrived.set()

    def segments(self, segments: list[Segment]) -> None:
        self._queue.put_nowait(("segments", [segment_event(s) for s in segments]))
        self._arrived.set()

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put_nowait(None)
        self._arrived.set()
        if self._task is not None:
            await self._task

    async def _write(self) -> None:
        # What has queued up meanwhile goes in one transaction (a short job's last segments
        # and its 100% come together).
        while (item := await self._queue.get()) is not None:
            items = [item]
            closing = False
            if item[0] == "progress" and item[1][0] == 0 and self._queue.empty():
                # Only the job's length, which shows in no event: a short job's next events
                # come within the wait, and all go in one transaction.
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), self.hold_start_s)
            while not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    closing = True
                    break
                items.append(more)
            try:
                await asyncio.to_thread(self.store.record_events, self.job_id, items, self.holder)
            except Exception:  # events are best effort; the job's outcome is not
                logger.exception("Could not record %d events for job %s", len(items), self.job_id)
            if closing:
                return


CANCELLED_MESSAGE = "Cancelled by request"


async def run_cancellable(
    store: JobStore, job_id: str, work: Awaitable[Transcript], poll_s: float = 1.0
) -> Transcript:
    """Await the work; when the job is cancelled in the store meanwhile (by any replica's
    DELETE: a notification, or a look every ``poll_s`` where there are none), stop it and
    raise JobCancelledError. Requests still queued at replicas are
    cancelled with it, a window being decoded finishes first. Both lanes, HTTP jobs and
    Whisper-Local jobs, run through this."""
    task = asyncio.ensure_future(work)
    cancelled = asyncio.Event()
    watcher = asyncio.create_task(_watch(store, job_id, task, cancelled, poll_s))
    try:
        return await task
    except asyncio.CancelledError:
        if not cancelled.is_set():
            raise  # shutting down or timed out: the caller decides
        raise JobCancelledError(CANCELLED_MESSAGE) from None
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _watch(
    store: JobStore,
    job_id: str,
    work: asyncio.Future[Transcript],
    cancelled: asyncio.Event,
    poll_s: float,
) -> None:
    # Woken by the job's ending (a cancel from any replica); its own events do not wake it.
    with store.changes.watch(job_id, finishes_only=True) as ended:
        while not work.done():
            await ended.wait(store.changes.fallback(poll_s))
            try:
                status = await asyncio.to_thread(store.status, job_id)
            except Exception:  # the store may be back at the next look
                logger.exception("Could not check whether job %s was cancelled", job_id)
                continue
            if status == "cancelled":
                cancelled.set()
                work.cancel()
                return


def segment_event(segment: Segment) -> dict[str, Any]:
    return {"id": segment.id, "start": segment.start, "end": segment.end, "text": segment.text}


@dataclass
class UnitCheckpoint:
    """A job's finished units in the store; failing to save one costs only its redo."""

    units: UnitStore
    job_id: str
    attempt: int
    holder: str | None = None
    # Whether the store may hold units of this job (saved now, or by an earlier attempt).
    stored: bool = False

    async def load(self) -> dict[Span, Transcript]:
        done = await asyncio.to_thread(self.units.done, self.job_id)
        # Units of an earlier delivery (one stopped in order gives its attempt back, so the
        # attempt count alone does not tell) go once the job is over.
        self.stored = self.stored or bool(done)
        return done

    async def save(self, span: Span, transcript: Transcript) -> None:
        try:
            self.stored = True  # before the write: it may land though it raises
            await asyncio.to_thread(
                self.units.save, self.job_id, span, self.attempt, transcript, self.holder
            )
        except Exception:
            logger.exception("Could not checkpoint a unit of job %s", self.job_id)
