"""The one job runner for both lanes (HTTP jobs and Whisper-Local contract jobs).

Per delivery: claim the job (wait while a dead delivery's lease runs out; leave the job to a
live one) -> finished already? hand the stored outcome on -> died 3 times? fail it -> start it
-> transcribe, checkpointing the units of long files -> record how it ended -> hand the outcome
on -> release the claim. Every write after the claim names its holder, so a delivery that lost
the claim changes nothing and stops.

Lanes differ only in how an outcome is handed on (``Deliver``): an AMQP result on
``whisper_results``, or nothing (the store is the answer; webhooks go out from it). Retries
go back through the lane's queue; this says when one is due. Plain asyncio, no Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple, TypeVar

from serve_app import logcontext, metrics
from serve_app.errors import JobCancelledError, ServiceBusyError, ServiceError
from serve_app.jobs.exports import ResultExport
from serve_app.jobs.fairness import FairTurns
from serve_app.jobs.leases import HeldElsewhere, LeaseLostError, Leases
from serve_app.jobs.running import EventWriter, Outcome, UnitCheckpoint, run_cancellable
from serve_app.media.spool import Spool
from serve_app.schemas import FINISHED, Job, TranscribeOptions, Transcript
from serve_app.store import Claim, ClaimStore, JobStore, UnitStore
from serve_app.transcription.pipeline import FileRequest, TranscribePathFn

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Hands a finished job's outcome to whoever waits for it; raising leaves it to be handed on
# by the next delivery of the job (from the store, never by transcribing again). The flag says
# whether it may have been handed on before (the job was finished when this delivery came):
# only then is there a record of it worth reading first.
Deliver = Callable[[Job, bool], Awaitable[None]]
# Why an orderly stop hands a job back; its attempt is not counted.
_STOPPED = "the delivery was stopped (shutdown, or its channel closed) before the job ended"


@dataclass(frozen=True)
class RunPolicy:
    timeout_s: float
    lease_s: float = 60.0
    cancel_poll_s: float = 1.0
    # Deliveries that died mid-job before the job is answered with an error instead.
    max_unfinished: int = 3
    busy_poll_s: float = 2.0
    # Waiting on the claim of holders that keep changing ends after this long (None: 3 leases).
    max_claim_wait_s: float | None = None


@dataclass
class JobRunner:
    store: JobStore
    claims: ClaimStore
    units: UnitStore
    transcribe: TranscribePathFn
    spool: Spool
    policy: RunPolicy
    # Claims are held as "<host>:<pid>:<replica>:<delivery>" (the store keeps 64 characters):
    # naming the host and process lets an operator, or a fault test, see who holds a job.
    replica: str = field(
        default_factory=lambda: f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    # Jobs whose earlier delivery died run one at a time here: if one of them kills the
    # worker again, the jobs beside it were not running and are not blamed for it.
    _suspects: asyncio.Lock = field(default_factory=asyncio.Lock)
    _in_flight: dict[str, int] = field(default_factory=dict)  # by source, for the gauge
    # Renewals through connections of their own (an engine with a pool of its own), so that
    # blocking work holding every connection of the shared pool cannot hold them up either.
    renewals: ClaimStore | None = None
    # Fair shares of the job slots between tenants; None: first come first served.
    turns: FairTurns | None = None
    # RESULTS_BUCKET: where finished transcripts are written back; None: the store only.
    exports: ResultExport | None = None
    leases: Leases = field(init=False)

    def __post_init__(self) -> None:
        policy = self.policy
        self.leases = Leases(
            self.claims,
            policy.lease_s,
            policy.busy_poll_s,
            policy.max_claim_wait_s,
            renewals=self.renewals,
        )

    async def run(
        self,
        job_id: str,
        attempt: int,
        final: bool,
        deliver: Deliver | None = None,
        redelivered: bool = False,
    ) -> tuple[Outcome, str | None]:
        """One delivery of a job (attempt is 0-based); returns the outcome and, for RETRY,
        the reason. Store errors propagate: the delivery is handed back and runs later.

        ``redelivered``: the broker handed this message out before. It may be the very
        message of a holder being stopped (a lost channel) whose last renewal still lands, so
        it never leaves the job to the holder: it waits for the claim instead."""
        holder = f"{self.replica}:{uuid.uuid4().hex[:16]}"  # one per delivery, not per replica
        claim = await self.leases.take(job_id, holder, leave_to_live=not redelivered)
        if claim is None:
            return Outcome.SKIPPED, None  # deleted: refused at submit, or past retention
        if isinstance(claim, HeldElsewhere):
            logger.info("Job %s is being run by a live delivery; settling this copy", job_id)
            return Outcome.SKIPPED, "another delivery is running it"
        about = logcontext.JobLog(job_id, claim.source, attempt, _attachment(claim.external_id))
        with logcontext.about(about):
            started = time.monotonic()
            source = claim.source
            metrics.set_gauge("whisper_jobs_in_flight", self._count(source, +1), source=source)
            try:
                async with self.leases.held(claim):
                    ended = await self._run_claimed(claim, attempt, final, deliver)
            except LeaseLostError:
                # Another delivery runs the job now and answers it; this one only settles.
                ended = _Ended(Outcome.SKIPPED, "lost the claim to another delivery")
            finally:
                count = self._count(source, -1)
                metrics.set_gauge("whisper_jobs_in_flight", count, source=source)
            metrics.inc("whisper_jobs_total", source=source, outcome=ended.outcome.value)
            await self._log_outcome(job_id, ended, time.monotonic() - started)
        return ended.outcome, ended.reason

    async def _log_outcome(self, job_id: str, ended: _Ended, run_s: float) -> None:
        """One line per run with its timings (keys of their own in JSON logs). It comes
        after the outcome was handed on, so a store error only thins the line: raising would
        fail the delivery, and its redelivery would hand the outcome on again. A job handed
        on was read then; only the others are read here."""
        outcome, reason, job = ended
        if job is None and outcome is not Outcome.SKIPPED:
            try:
                job = await asyncio.to_thread(self.store.find, job_id)
            except Exception:
                logger.exception("Could not read job %s for its outcome line", job_id)
        timings: dict[str, object] = {"outcome": outcome.value, "run_s": round(run_s, 3)}
        if job is not None:
            if (waited := _queue_wait_s(job)) is not None:
                timings["queue_wait_s"] = round(waited, 3)
            timings.update(audio_s=job.duration, attempts=job.attempts, status=job.status)
        level = logging.WARNING if outcome in (Outcome.FAILED, Outcome.RETRY) else logging.INFO
        because = f" ({reason})" if reason else ""
        logger.log(
            level, "Job %s %s in %.1f s%s", job_id, outcome.value, run_s, because, extra=timings
        )

    def _count(self, source: str, change: int) -> float:
        self._in_flight[source] = self._in_flight.get(source, 0) + change
        return float(self._in_flight[source])

    async def _run_claimed(
        self, claim: Claim, attempt: int, final: bool, deliver: Deliver | None
    ) -> _Ended:
        """How the delivery ended, with the job as handed on (None if it was not)."""
        job_id = claim.job_id
        if claim.status in FINISHED:
            # Answered before (a duplicate, a retry copy, or a redelivery after the outcome
            # was recorded): hand on the stored outcome, never transcribe again.
            return _Ended(Outcome.SKIPPED, job=await self._hand_on(job_id, deliver, again=True))
        if claim.unfinished >= self.policy.max_unfinished:
            abandoned = (
                f"Abandoned after {claim.unfinished} deliveries that never finished: "
                "the worker stopped while running this job each time"
            )
            logger.error("Job %s: %s", job_id, abandoned)
            failed = await self._written(claim, self.store.fail, job_id, abandoned, claim.holder)
            return _Ended(
                Outcome.FAILED, abandoned, await self._hand_on(job_id, deliver, job=failed)
            )
        if (other := await self._yields(claim)) is not None:
            # Not started, so nothing to give back: the claim is released on the way out.
            return _Ended(Outcome.DEFERRED, f"fair share: tenant {other[:8]} runs fewer jobs")
        suspect = claim.unfinished > 0
        if suspect:
            logger.warning(
                "Job %s: %d earlier deliveries never finished; running it alone",
                job_id,
                claim.unfinished,
            )
        # A suspect keeps the lock until its outcome is handed on: another suspect that kills
        # the worker must not run between this job's result going out and being recorded.
        async with self._suspects if suspect else contextlib.nullcontext():
            checkpoint = UnitCheckpoint(self.units, job_id, 0, claim.holder)
            ended = await self._attempt(claim, attempt, final, checkpoint)
            if ended.outcome in (Outcome.RETRY, Outcome.DEFERRED):
                return ended
            handed = await self._hand_on(job_id, deliver, checkpoint=checkpoint, job=ended.job)
        return ended._replace(job=handed)

    def _weighed(self, options: TranscribeOptions) -> TranscribeOptions:
        """The job's options with its tenant's weight (API_KEY_WEIGHTS), which the store does
        not keep."""
        if self.turns is None or options.tenant is None:
            return options
        tenant = replace(options.tenant, weight=self.turns.weight(options.tenant.id))
        return options.model_copy(update={"tenant": tenant})

    async def _yields(self, claim: Claim) -> str | None:
        """The tenant a queued job gives its slot to (``serve_app.jobs.fairness``), if any."""
        if claim.status != "queued" or self.turns is None:
            return None
        return await self.turns.ahead(claim)

    async def _attempt(
        self, claim: Claim, attempt: int, final: bool, checkpoint: UnitCheckpoint
    ) -> _Ended:
        job_id, holder = claim.job_id, claim.holder
        starting = asyncio.ensure_future(asyncio.to_thread(self.store.start, job_id, holder))
        try:
            job = await asyncio.shield(starting)
            if job is None:
                # Finished meanwhile (cancelled, or by an earlier delivery): its units may stay.
                checkpoint.stored = True
                return _Ended(Outcome.SKIPPED)
            # An earlier attempt may have left finished units behind, to go once it is over.
            checkpoint.attempt, checkpoint.stored = job.attempts, job.attempts > 1
            return await self._work(claim, job, attempt, final, checkpoint)
        except asyncio.CancelledError:
            # An orderly stop, or the channel went: the job comes again, and this delivery
            # neither used an attempt nor died. A start still under way may yet commit: it is
            # waited for, so that what it counted is given back. A lost claim gives back
            # nothing (not ours).
            # A channel lost twice cancels twice: the give-back still ends before the claim
            # is released, or the release would fence it out.
            with contextlib.suppress(Exception):
                if await _despite_cancel(starting) is not None:
                    await _despite_cancel(
                        asyncio.to_thread(self.store.give_back, job_id, holder, _STOPPED)
                    )
            raise

    async def _work(
        self, claim: Claim, job: Job, attempt: int, final: bool, checkpoint: UnitCheckpoint
    ) -> _Ended:
        job_id, holder = claim.job_id, claim.holder
        if job.attempts == 1 and (waited := _queue_wait_s(job)) is not None:
            metrics.observe("whisper_queue_wait_seconds", waited, source=job.source)
        events = EventWriter(self.store, job_id, holder).start()
        request = FileRequest(
            job.audio_path, self._weighed(job.options), events.progress, events.segments, checkpoint
        )
        work = asyncio.wait_for(self.transcribe(request), self.policy.timeout_s)
        reason: str | None = None
        retryable = cancelled = busy = False
        transcript: Transcript | None = None
        objects: dict[str, str] | None = None
        try:
            done = await run_cancellable(self.store, job_id, work, self.policy.cancel_poll_s)
            if self.exports is not None:
                # A storage outage here defers the job like a busy service: its units stay
                # stored, so the next try reassembles the transcript instead of redoing it.
                objects = await asyncio.to_thread(self.exports.write, job, done)
            transcript = done
        except JobCancelledError:
            cancelled = True
        except ServiceBusyError as exc:  # the service's own limit, not the job's fault
            reason, busy = exc.message, True
        except ServiceError as exc:
            reason, retryable = exc.message, exc.retryable
        except TimeoutError:
            reason, retryable = f"Timed out after {self.policy.timeout_s:.0f}s", True
        except Exception as exc:  # unknown failures get the benefit of the doubt: retry
            logger.exception("Job %s failed unexpectedly", job_id)
            reason, retryable = f"Internal error ({exc.__class__.__name__})", True
        finally:
            await events.close()
        if cancelled:
            logger.info("Job %s cancelled while running", job_id)
            return _Ended(Outcome.CANCELLED)
        if transcript is not None:
            completed = await self._written(
                claim, self.store.complete, job_id, transcript, holder, objects
            )
            return _Ended(Outcome.COMPLETED, job=completed)
        assert reason is not None
        if busy:
            # Waiting for room is not an attempt: the job comes back with its count unchanged.
            await self._written(claim, self.store.give_back, job_id, holder, reason)
            return _Ended(Outcome.DEFERRED, reason)
        if retryable and not final:
            await self._written(claim, self.store.requeue, job_id, reason, holder)
            return _Ended(Outcome.RETRY, reason)
        if retryable:
            reason = f"Failed after {attempt + 1} attempts: {reason}"
        failed = await self._written(claim, self.store.fail, job_id, reason, holder)
        return _Ended(Outcome.FAILED, reason, failed)

    async def _written(self, claim: Claim, write: Callable[..., T], *args: object) -> T:
        """A fenced write, and what it returned; when it changed nothing because the claim
        went to another delivery, LeaseLostError. (It may also change nothing for a job
        cancelled meanwhile: the stored outcome stands, and is handed on.)"""
        written = await asyncio.to_thread(write, *args)
        if not written and not await self.leases.still_held(claim):
            raise LeaseLostError(f"claim on job {claim.job_id} lost")
        return written

    async def _hand_on(
        self,
        job_id: str,
        deliver: Deliver | None,
        again: bool = False,
        checkpoint: UnitCheckpoint | None = None,
        job: Job | None = None,
    ) -> Job | None:
        """The finished job handed on (None: it is not finished, or gone). ``checkpoint``:
        this delivery's, which knows whether any units are stored (without it, as for a job
        finished before, they may be). ``job``: as this delivery's last write left it, if
        that write ended it (else it is read)."""
        if job is None:
            job = await asyncio.to_thread(self.store.find, job_id)
        if job is None or job.status not in FINISHED:
            return None
        if again:  # named by the caller's id (an AMQP job's attachment_id) for its logs
            logger.info("Job %s answered from its stored result", job.external_id or job.id)
        if deliver is not None:
            await deliver(job, again)
        # The outcome is out: from here nothing may fail the delivery, or its redelivery would
        # hand the outcome on a second time. What is left is tidying; retention redoes it.
        try:
            if checkpoint is None or checkpoint.stored:
                await asyncio.to_thread(self.units.drop_results, job_id)
            if job.spooled:
                await asyncio.to_thread(self.spool.remove, job.audio_path)
        except Exception:
            logger.exception("Could not tidy up after job %s; retention will", job_id)
        return job


class _Ended(NamedTuple):
    """How one attempt ended, and the job as its ending left it (when it was this
    delivery's write that ended it)."""

    outcome: Outcome
    reason: str | None = None
    job: Job | None = None


async def _despite_cancel(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even when cancelled again meanwhile; for the tidying a
    cancelled delivery does before it re-raises."""
    future = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled():
                raise


def _attachment(external_id: str | None) -> int | None:
    return int(external_id) if external_id and external_id.isdigit() else None


def _queue_wait_s(job: Job) -> float | None:
    """From acceptance to the first start (clocks of two nodes: never below 0)."""
    if job.started_at is None:
        return None
    return max((job.started_at - job.created_at).total_seconds(), 0.0)
