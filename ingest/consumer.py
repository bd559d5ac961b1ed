"""The two lanes consumed from RabbitMQ, and what each message means.

- Whisper-Local requests (the contract): parse -> answered before? ack -> admit the job ->
  run it (claim, transcribe, record) -> publish its one result | publish a TTL retry.
- HTTP jobs (the service's own lane): run the job by id -> record | publish a TTL retry.

Both run through the one job runner handed in as ``Jobs``; the lanes differ only in how the
outcome leaves. Connecting, settling and publishing live in ``ingest.transport``: a handler
that returns is acked, one that raises is handed back and comes again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode

from ingest import contract as c
from ingest import topology
from ingest.transport import AmqpTransport, Handler, PublishError, TransportConfig
from serve_app import metrics
from serve_app.errors import ServiceError
from serve_app.jobs.runner import Deliver
from serve_app.jobs.running import Outcome
from serve_app.periodic import every
from serve_app.schemas import Job, QueuedTranscriptionRequest, QueuedTranscriptionResult

logger = logging.getLogger(__name__)


class Jobs(Protocol):
    """The job side, as the queue side sees it (``serve_app.jobs.service.JobService``)."""

    async def was_answered(self, key: str) -> bool:
        """The contract job's result was confirmed published (the ledger)."""

    async def admit(self, request: QueuedTranscriptionRequest, key: str) -> str:
        """The job's id in the store, recorded now if it is new."""

    async def run(
        self,
        job_id: str,
        attempt: int,
        final: bool,
        deliver: Deliver | None = None,
        redelivered: bool = False,
    ) -> tuple[Outcome, str | None]: ...

    async def answered(self, key: str, result: QueuedTranscriptionResult, message_id: str) -> None:
        """Record a published result, so no other delivery publishes one again."""

    async def enqueued(self, job_id: str) -> None:
        """An HTTP job's message was confirmed on the broker (the outbox)."""


class IngestConsumer:
    def __init__(
        self, config: TransportConfig, jobs: Jobs, model_name: str, http_jobs: bool = True
    ) -> None:
        # Named in error results of jobs that never reached the model.
        self._model_name = model_name
        self._jobs = jobs
        self._http_jobs = http_jobs
        self.transport = AmqpTransport(config)
        self.status = self.transport.status

    async def run(self) -> None:
        await self.transport.run(self._lanes)

    async def stop(self) -> None:
        await self.transport.stop()

    async def watch_queues(self, every_s: float) -> None:
        """Read each lane's depth on the broker every ``every_s`` into the status and the
        metrics, for as long as the replica runs (not while disconnected)."""

        async def read() -> None:
            if self.status.connected:
                await asyncio.wait_for(self.transport.queue_depths(), every_s)

        await every(every_s, read, "read the queues' depths", logger)

    def _lanes(self, _: topology.Topology) -> dict[str, Handler]:
        lanes: dict[str, Handler] = {"requests": self._on_request}
        if self._http_jobs:
            lanes["jobs"] = self._on_job
        return lanes

    async def submit_job(self, job_id: str) -> None:
        """Queue an accepted HTTP job durably; PublishError if the broker does not confirm."""
        if not self.status.connected:
            raise PublishError(self.status.last_error or "not connected to RabbitMQ")
        try:
            async with asyncio.timeout(self.transport.config.submit_timeout_s):
                await self.transport.publish(
                    self.transport.out.job_exchange, _job_message(job_id), c.JOB_ROUTING_KEY
                )
        except TimeoutError:
            # Not confirmed, yet maybe still on its way: if it lands after the caller dropped
            # the job, its delivery finds no job and is acked without running anything.
            raise PublishError(
                f"RabbitMQ did not confirm within {self.transport.config.submit_timeout_s:.0f} s "
                "(is it blocking publishers?)"
            ) from None
        await self._jobs.enqueued(job_id)

    # --- the Whisper-Local lane -----------------------------------------------------------------

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        try:
            parsed = c.parse_request(message.body)
        except c.UnanswerableMessage as exc:
            await self.transport.park(message, str(exc))
            return
        except c.MalformedRequest as exc:
            result = c.error_result(
                exc.attachment_id, exc.import_batch_id, self._model_name, exc.message
            )
            await self._publish_result(message, result, f"{exc.attachment_id}-malformed")
            return

        request = parsed.request
        key = c.job_key(request)
        attempt = c.retry_count(request, dict(message.headers or {}))
        # Checked on every delivery, before anything is recorded: a producer that publishes
        # the same request twice gets one answer.
        if await self._jobs.was_answered(key):
            logger.info("Job %s already answered; acking the duplicate", request.attachment_id)
            return
        try:
            job_id = await self._jobs.admit(request, key)
        except ServiceError as exc:
            if exc.retryable:
                raise
            # Refused before it is a job (an unknown language, say): one error result now.
            result = c.error_result(
                request.attachment_id,
                request.import_batch_id,
                self._model_name,
                exc.message,
                attempts=attempt + 1,
            )
            await self._jobs.answered(key, result, await self._publish_result(message, result, key))
            return

        async def deliver(job: Job, again: bool) -> None:
            # Answered before only if it was finished before this delivery: only then can a
            # result have gone out (or a duplicate's, under one key).
            if again and await self._jobs.was_answered(key):
                return
            if job.status == "completed" and job.result is not None:
                result = c.success_result(request, job.result, attempt + 1, job.result_objects)
            else:
                result = c.error_result(
                    request.attachment_id,
                    request.import_batch_id,
                    self._model_name,
                    job.error or "failed",
                    attempts=attempt + 1,
                )
            message_id = await self._publish_result(message, result, key)
            await self._jobs.answered(key, result, message_id)

        outcome, reason = await self._jobs.run(
            job_id,
            attempt,
            final=c.JOB_RETRIES.is_final(attempt + 1),
            deliver=deliver,
            redelivered=bool(message.redelivered),
        )
        if outcome in (Outcome.RETRY, Outcome.DEFERRED):
            # A deferred job (no room now) comes again with its count unchanged.
            count = attempt + (outcome is Outcome.RETRY)
            self._log_retry(request.attachment_id, reason, attempt, "amqp", outcome)
            retry = aio_pika.Message(
                body=c.retry_body(parsed.body, count),
                headers=c.retry_headers(dict(message.headers or {}), count),
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                priority=message.priority,  # honoured where the queue has x-max-priority
            )
            await self.transport.publish(self.transport.out.retries, retry, c.RETRY_ROUTING_KEY)

    async def _publish_result(
        self, message: AbstractIncomingMessage, result: QueuedTranscriptionResult, key: str
    ) -> str:
        message_id = c.result_message_id(key)
        out = aio_pika.Message(
            body=result.to_json(),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=message.correlation_id
            or message.message_id
            or str(result.attachment_id),
        )
        await self.transport.publish(self.transport.out.results, out, c.RESULT_ROUTING_KEY)
        self.status.results += 1
        return message_id

    # --- the HTTP jobs lane ---------------------------------------------------------------------

    async def _on_job(self, message: AbstractIncomingMessage) -> None:
        try:
            job_id, attempt = c.parse_job_message(message.body)
        except c.UnanswerableMessage as exc:
            await self.transport.park(message, str(exc))
            return
        outcome, reason = await self._jobs.run(
            job_id,
            attempt,
            final=c.JOB_RETRIES.is_final(attempt + 1),
            redelivered=bool(message.redelivered),
        )
        if outcome not in (Outcome.RETRY, Outcome.DEFERRED):
            self.status.results += outcome is not Outcome.SKIPPED
            return
        self._log_retry(job_id, reason, attempt, "http", outcome)
        retry = _job_message(job_id, attempt + (outcome is Outcome.RETRY))
        await self.transport.publish(self.transport.out.job_retries, retry, c.JOB_RETRY_ROUTING_KEY)

    def _log_retry(
        self, job: object, reason: str | None, attempt: int, source: str, outcome: Outcome
    ) -> None:
        if outcome is Outcome.DEFERRED:
            # Counted in whisper_jobs_total{outcome="deferred"}; it is no retry.
            logger.info("Job %s waits for room (%s); it comes again uncounted", job, reason)
            return
        logger.warning(
            "Job %s failed (%s); retry %d of %d",
            job,
            reason,
            attempt + 1,
            c.JOB_RETRIES.attempts - 1,
        )
        self.status.retries += 1
        metrics.inc("whisper_job_retries_total", source=source)


def _job_message(job_id: str, retry_count: int = 0) -> aio_pika.Message:
    """An HTTP job on the service's own lane, first submitted or retried."""
    return aio_pika.Message(
        body=c.job_message(job_id, retry_count),
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=job_id,
    )
