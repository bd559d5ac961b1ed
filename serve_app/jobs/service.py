"""The job use cases, whichever edge they come from.

- HTTP (``serve_app.api.jobs``): an owner's quota, submit (recorded, then queued; forgotten
  with its upload if it could not be queued) and cancel (its upload removed).
- The queue side (``ingest``), through ``JobService``: admit a Whisper-Local job, run any job
  through the one runner, and record what left on the broker.

Everything behind them (job state, claims, the ledger of published results, the outbox) stays
in ``serve_app.store``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import get_args

from sqlalchemy.exc import DataError, IntegrityError

from serve_app.errors import (
    InvalidOptionError,
    MalformedRequestError,
    QueueUnavailableError,
    QuotaExceededError,
    ServiceError,
)
from serve_app.jobs import exports
from serve_app.jobs.runner import Deliver, JobRunner
from serve_app.jobs.running import Outcome
from serve_app.media.spool import Spool
from serve_app.model_options import check_keywords, check_languages, normalize_language
from serve_app.retry import Growth, RetryPolicy
from serve_app.schemas import (
    Job,
    QueuedTranscriptionRequest,
    QueuedTranscriptionResult,
    ResponseFormat,
    TranscribeOptions,
)
from serve_app.store import JobStore, Outbox, ResultLedger
from serve_app.store.jobs import NewJob, Viewer

logger = logging.getLogger(__name__)

# Recording a published result is retried briefly: each miss is a result a later duplicate
# delivery could publish again (with the same message id, so consumers can still tell).
RECORD_RETRIES = RetryPolicy(attempts=3, backoff_s=0.5, growth=Growth.LINEAR)
QUOTA_RETRY_S = 30


@dataclass(frozen=True)
class Quota:
    """What one owner's unfinished jobs may hold (MAX_QUEUED_JOBS_PER_KEY,
    MAX_SPOOLED_MB_PER_KEY)."""

    max_jobs: int
    max_spooled_mb: float


async def check_quota(store: JobStore, owner: str | None, new_bytes: int, quota: Quota) -> None:
    jobs, spooled = await asyncio.to_thread(store.usage, owner)
    if jobs >= quota.max_jobs:
        raise QuotaExceededError(
            f"This API key has {jobs} unfinished jobs, the most it may have; "
            "wait for some to finish",
            QUOTA_RETRY_S,
        )
    if spooled + new_bytes > quota.max_spooled_mb * 1024 * 1024:
        raise QuotaExceededError(
            f"This API key's unfinished jobs hold {spooled / 1048576:.0f} MB of uploads; "
            f"the limit is {quota.max_spooled_mb:.0f} MB",
            QUOTA_RETRY_S,
        )


async def submit(
    store: JobStore, new: NewJob, enqueue: Callable[[str], Awaitable[None]], spool: Spool
) -> tuple[Job, bool]:
    """The job recorded, then queued: (job, True). The same idempotency key's job if another
    request won the race to record it: (that job, False), this one's upload dropped. If it
    cannot be queued nothing was accepted: the job is forgotten and its upload dropped, so the
    client's retry starts clean."""
    job, created = await asyncio.to_thread(store.create, new)
    if not created:
        await _drop_upload(new, spool)
        return job, False
    try:
        await enqueue(job.id)
    except QueueUnavailableError:
        await asyncio.to_thread(store.delete, job.id)
        await _drop_upload(new, spool)
        raise
    return job, True


async def cancel(store: JobStore, job_id: str, viewer: Viewer, spool: Spool) -> Job:
    """Cancelled (a running job stops at its next check); its upload goes at once, since a
    running job has its samples decoded already."""
    job = await asyncio.to_thread(store.cancel, job_id, viewer)
    if job.spooled:
        await _removed(spool, job.audio_path)
    return job


async def _drop_upload(new: NewJob, spool: Spool) -> None:
    if new.spooled:
        await _removed(spool, new.audio_path)


async def _removed(spool: Spool, name: str) -> None:
    """An upload deleted now if the spool can; else the orphan sweep deletes it later."""
    try:
        await asyncio.to_thread(spool.remove, name)
    except ServiceError as exc:
        logger.warning("Could not delete the upload %s now (%s); the sweep will", name, exc)


@dataclass
class JobService:
    store: JobStore
    runner: JobRunner
    ledger: ResultLedger
    outbox: Outbox
    model: str

    async def was_answered(self, key: str) -> bool:
        return await asyncio.to_thread(self.ledger.was_published, key)

    async def admit(self, request: QueuedTranscriptionRequest, key: str) -> str:
        # "diarize": an extra field of ours; producers of the seed never send it.
        extra = request.model_extra or {}
        diarize = extra.get("diarize") is True
        response_format = _response_format(extra.get("response_format"), diarize)
        language = normalize_language(request.language)
        options = TranscribeOptions(
            model=self.model,
            language=language,
            languages=check_languages(request.languages, language),
            keywords=check_keywords(request.keywords),
            diarize=diarize,
        )
        new = NewJob(
            source="amqp",
            audio_path=request.audio_file_path,
            options=options,
            model=self.model,
            external_id=str(request.attachment_id),
            idempotency_key=f"amqp:{key}",
            id=key,
            response_format=response_format,
        )
        try:
            job, _ = await asyncio.to_thread(self.store.create, new)
        except (DataError, IntegrityError) as exc:
            # The request holds what the store cannot keep (a NUL in a path, a field past its
            # column): no retry changes that, so it is answered now instead of looping.
            # The kind only: a driver's text may quote the value it refused.
            logger.warning(
                "The store refused job %s (%s)", request.attachment_id, type(exc.orig).__name__
            )
            raise MalformedRequestError(
                "Malformed request: a field holds what the job store cannot keep"
            ) from None
        return job.id

    async def run(
        self,
        job_id: str,
        attempt: int,
        final: bool,
        deliver: Deliver | None = None,
        redelivered: bool = False,
    ) -> tuple[Outcome, str | None]:
        return await self.runner.run(job_id, attempt, final, deliver, redelivered)

    async def answered(self, key: str, result: QueuedTranscriptionResult, message_id: str) -> None:
        for attempt in range(1, RECORD_RETRIES.attempts + 1):
            try:
                await asyncio.to_thread(
                    self.ledger.record, key, result.attachment_id, message_id, result.success
                )
                return
            except Exception:
                # The result is out: the delivery is acked even so; requeueing would publish
                # it again for certain.
                logger.exception(
                    "Could not record the published result of %s (try %d of %d)",
                    result.attachment_id,
                    attempt,
                    RECORD_RETRIES.attempts,
                )
                if not RECORD_RETRIES.is_final(attempt):
                    await asyncio.sleep(RECORD_RETRIES.delay_s(attempt))

    async def enqueued(self, job_id: str) -> None:
        try:
            await asyncio.to_thread(self.outbox.mark_enqueued, job_id)
        except Exception:  # the job is on the broker; the sweeper may publish it once more
            logger.exception("Could not mark job %s as queued", job_id)


def _response_format(value: object, diarize: bool) -> ResponseFormat | None:
    """A request's "response_format" (ours, for RESULTS_BUCKET): one of the HTTP formats."""
    if value is None:
        return None
    if value not in get_args(ResponseFormat):
        raise InvalidOptionError(
            f"response_format must be one of {', '.join(get_args(ResponseFormat))}",
            param="response_format",
        )
    fmt: ResponseFormat = value  # type: ignore[assignment]
    exports.check_format(fmt, diarize)
    return fmt
