"""The narrow door the queue side (``ingest``) is handed: admit a Whisper-Local job, run any
job through the one runner, and record what left on the broker. Everything behind it (job
state, claims, the ledger of published results, the outbox) stays in ``serve_app.store``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.exc import DataError, IntegrityError

from serve_app.errors import MalformedRequestError
from serve_app.jobs.runner import Deliver, JobRunner
from serve_app.jobs.running import Outcome
from serve_app.model_options import normalize_language
from serve_app.schemas import (
    QueuedTranscriptionRequest,
    QueuedTranscriptionResult,
    TranscribeOptions,
)
from serve_app.store import JobStore, Outbox, ResultLedger
from serve_app.store.jobs import NewJob

logger = logging.getLogger(__name__)

# Recording a published result is retried briefly: each miss is a result a later duplicate
# delivery could publish again (with the same message id, so consumers can still tell).
_RECORD_TRIES = 3


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
        diarize = (request.model_extra or {}).get("diarize") is True
        options = TranscribeOptions(
            model=self.model, language=normalize_language(request.language), diarize=diarize
        )
        new = NewJob(
            source="amqp",
            audio_path=request.audio_file_path,
            options=options,
            model=self.model,
            external_id=str(request.attachment_id),
            idempotency_key=f"amqp:{key}",
            id=key,
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
        for attempt in range(1, _RECORD_TRIES + 1):
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
                    _RECORD_TRIES,
                )
                if attempt < _RECORD_TRIES:
                    await asyncio.sleep(0.5 * attempt)

    async def enqueued(self, job_id: str) -> None:
        try:
            await asyncio.to_thread(self.outbox.mark_enqueued, job_id)
        except Exception:  # the job is on the broker; the sweeper may publish it once more
            logger.exception("Could not mark job %s as queued", job_id)
