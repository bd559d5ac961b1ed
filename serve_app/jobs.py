"""Running one job: start it in the store, transcribe with progress and segment events, stop
when it is cancelled, record how it ended.

Plain asyncio over the store and a transcribe callable, so it runs without Ray. The queue
(RabbitMQ) decides retries; this reports whether the job should be retried.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app import spool
from serve_app.errors import JobCancelledError, ServiceError
from serve_app.fanout import ProgressFn, SegmentsFn
from serve_app.schemas import Segment, TranscribeOptions, Transcript
from serve_app.store import JobStore

logger = logging.getLogger(__name__)

TranscribePathFn = Callable[[str, TranscribeOptions, ProgressFn, SegmentsFn], Awaitable[Transcript]]


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY = "retry"
    SKIPPED = "skipped"  # cancelled while queued, already finished, or deleted


@dataclass
class EventWriter:
    """Progress and segment callbacks come from the event loop and must not block it: they are
    written to the store in order by one background task."""

    store: JobStore
    job_id: str
    _queue: asyncio.Queue[tuple[str, Any] | None] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None

    def start(self) -> EventWriter:
        self._task = asyncio.create_task(self._write())
        return self

    def progress(self, done_s: float, total_s: float) -> None:
        self._queue.put_nowait(("progress", (done_s, total_s)))

    def segments(self, segments: list[Segment]) -> None:
        self._queue.put_nowait(("segments", [segment_event(s) for s in segments]))

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    async def _write(self) -> None:
        while (item := await self._queue.get()) is not None:
            kind, payload = item
            try:
                if kind == "progress":
                    await asyncio.to_thread(self.store.record_progress, self.job_id, *payload)
                else:
                    await asyncio.to_thread(self.store.record_segments, self.job_id, payload)
            except Exception:  # events are best effort; the job's outcome is not
                logger.exception("Could not record %s for job %s", kind, self.job_id)


CANCELLED_MESSAGE = "Cancelled by request"


async def run_cancellable(
    store: JobStore, job_id: str, work: Awaitable[Transcript], poll_s: float = 1.0
) -> Transcript:
    """Await the work; when the job is cancelled in the store meanwhile (by any replica's
    DELETE), stop it and raise JobCancelledError. Requests still queued at replicas are
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
    while not work.done():
        await asyncio.sleep(poll_s)
        try:
            status = await asyncio.to_thread(store.status, job_id)
        except Exception:  # the store may be back at the next poll
            logger.exception("Could not check whether job %s was cancelled", job_id)
            continue
        if status == "cancelled":
            cancelled.set()
            work.cancel()
            return


def segment_event(segment: Segment) -> dict[str, Any]:
    return {"id": segment.id, "start": segment.start, "end": segment.end, "text": segment.text}


@dataclass
class JobRunner:
    store: JobStore
    transcribe: TranscribePathFn
    spool_dir: Path
    timeout_s: float
    cancel_poll_s: float = 1.0

    async def run(self, job_id: str, attempt: int, final: bool) -> tuple[Outcome, str | None]:
        """Run one attempt (0-based); returns the outcome and, for RETRY, the reason."""
        job = await asyncio.to_thread(self.store.start, job_id)
        if job is None:
            await self._release_audio(job_id)
            return Outcome.SKIPPED, None
        events = EventWriter(self.store, job_id).start()
        work = asyncio.wait_for(
            self.transcribe(job.audio_path, job.options, events.progress, events.segments),
            self.timeout_s,
        )
        reason: str | None = None
        retryable = cancelled = False
        transcript: Transcript | None = None
        try:
            transcript = await run_cancellable(self.store, job_id, work, self.cancel_poll_s)
        except JobCancelledError:
            cancelled = True
        except ServiceError as exc:
            reason, retryable = exc.message, exc.retryable
        except TimeoutError:
            reason, retryable = f"Timed out after {self.timeout_s:.0f}s", True
        except Exception as exc:  # unknown failures get the benefit of the doubt: retry
            logger.exception("Job %s failed unexpectedly", job_id)
            reason, retryable = f"Internal error ({exc.__class__.__name__})", True
        finally:
            await events.close()
        if cancelled:
            logger.info("Job %s cancelled while running", job_id)
            outcome = Outcome.CANCELLED
        elif transcript is not None:
            await asyncio.to_thread(self.store.complete, job_id, transcript)
            outcome = Outcome.COMPLETED
        elif retryable and not final:
            assert reason is not None
            await asyncio.to_thread(self.store.requeue, job_id, reason)
            return Outcome.RETRY, reason
        else:
            if retryable:
                reason = f"Failed after {attempt + 1} attempts: {reason}"
            await asyncio.to_thread(self.store.fail, job_id, reason or "failed")
            outcome = Outcome.FAILED
        await self._release_audio(job_id)
        return outcome, reason

    async def _release_audio(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.find, job_id)
        if job is not None and job.spooled and job.status not in ("queued", "running"):
            await asyncio.to_thread(spool.remove, job.audio_path, self.spool_dir)
