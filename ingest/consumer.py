"""Consume transcription requests and answer each with exactly one result.

Plain asyncio + aio-pika: the job itself is a callable (the Serve deployment passes one that
calls the model pools), so this runs, and is tested, without Ray.

Per message: parse -> (already answered? ack) -> run -> publish result | retry | park -> ack.
An ack only ever follows a confirmed publish; if publishing fails the message is requeued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)

from ingest import contract as c
from ingest import topology
from serve_app.errors import ServiceError
from serve_app.jobs import JobRunner, Outcome
from serve_app.schemas import QueuedTranscriptionRequest, QueuedTranscriptionResult, Transcript
from serve_app.store import ResultLedger

logger = logging.getLogger(__name__)

RunRequest = Callable[[QueuedTranscriptionRequest], Awaitable[Transcript]]
# Told (job key, error message) when a contract job is answered with an error.
FailedHook = Callable[[str, str], Awaitable[None]]
# After a failed publish the message is requeued; pause so a broken route is not a hot loop.
_REQUEUE_PAUSE_S = 1.0


@dataclass
class ConsumerConfig:
    url: str
    prefetch: int
    model_name: str
    job_timeout_s: float = 1500
    reconnect_max_s: float = 30
    shutdown_grace_s: float = 90
    result_retention: timedelta = timedelta(days=7)


@dataclass
class ConsumerStatus:
    connected: bool = False
    consuming: bool = False
    last_error: str | None = None
    in_flight: int = 0
    results: int = 0
    retries: int = 0
    parked: int = 0
    since: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "up" if self.connected and self.consuming else "down",
            **self.__dict__,
        }


class PublishError(Exception):
    pass


class IngestConsumer:
    def __init__(
        self,
        config: ConsumerConfig,
        run_job: RunRequest,
        ledger: ResultLedger,
        jobs: JobRunner | None = None,
        on_failed: FailedHook | None = None,
    ) -> None:
        self._config = config
        self._run_job = run_job
        self._ledger = ledger
        # HTTP jobs, consumed from the service's own queue when given.
        self._jobs = jobs
        self._on_failed = on_failed
        self.status = ConsumerStatus()
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        # Results and retries go out on the confirming channel; requests come in on another.
        self._out: topology.Topology | None = None
        self._consumed: list[tuple[AbstractQueue, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Jobs whose delivery died with its channel: the broker redelivers them, so finishing
        # them too could answer a job twice, and settling them on a reopened channel fails.
        self._abandoned: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (retrying with backoff until the broker answers), then consume until stop()."""
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self._start()
                break
            except Exception as exc:  # aio-pika raises several unrelated types on connect
                self.status.last_error = f"{exc.__class__.__name__}: {exc}"
                logger.warning("RabbitMQ not available (%s); retrying in %.0fs", exc, delay)
                await self._close_connection()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, self._config.reconnect_max_s)
        await self._stopping.wait()

    async def _start(self) -> None:
        connection = await aio_pika.connect_robust(self._config.url)
        self._connection = connection
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        consumer_channel = await connection.channel()
        consumer_channel.close_callbacks.add(self._abandon_in_flight)
        # global: RabbitMQ shares the count among every consumer on the channel, so the contract
        # lane and the jobs lane together hold WORKERS_COUNT, not WORKERS_COUNT each.
        await consumer_channel.set_qos(prefetch_count=self._config.prefetch, global_=True)
        self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._out = await topology.declare(self._publisher)
        incoming = await topology.declare(consumer_channel)
        self._consumed = [(incoming.requests, await incoming.requests.consume(self._on_request))]
        if self._jobs is not None:
            self._consumed.append((incoming.jobs, await incoming.jobs.consume(self._on_job)))
        self.status.connected = self.status.consuming = True
        self.status.last_error = None
        logger.info(
            "Consuming %s with prefetch %d",
            ", ".join(queue.name for queue, _ in self._consumed),
            self._config.prefetch,
        )

    def _on_connection_lost(self, *_: Any) -> None:
        self.status.connected = False
        if not self._stopping.is_set():
            self.status.last_error = "connection lost; reconnecting"

    def _abandon_in_flight(self, *_: Any) -> None:
        if self._tasks:
            logger.warning(
                "Channel lost with %d jobs in flight; the broker will redeliver them",
                len(self._tasks),
            )
        for task in self._tasks:
            self._abandoned.add(task)
            task.cancel()

    def _on_reconnected(self, *_: Any) -> None:
        self.status.connected = True
        self.status.last_error = None

    async def stop(self) -> None:
        """Stop taking messages, let in-flight jobs finish within the grace period, then hand the
        rest back to the broker (nack with requeue). Never acks an unanswered job."""
        self._stopping.set()
        self.status.consuming = False
        for queue, tag in self._consumed:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # a lost channel has no consumer left to cancel
                logger.warning("Could not cancel consuming %s: %r", queue.name, exc)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self._config.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
        await self._close_connection()

    async def _close_connection(self) -> None:
        if self._connection is not None:
            try:
                await self._connection.close()
            except Exception as exc:  # closing a broken connection: nothing left to do
                logger.warning("Could not close the RabbitMQ connection cleanly: %r", exc)
        self._connection = None
        self.status.connected = False

    def purge_old_records(self) -> int:
        return self._ledger.purge(self._config.result_retention)

    async def submit_job(self, job_id: str) -> None:
        """Queue an accepted HTTP job durably; PublishError if the broker does not confirm."""
        if self._out is None or not self.status.connected:
            raise PublishError(self.status.last_error or "not connected to RabbitMQ")
        await self._publish(self._out.job_exchange, _job_message(job_id), c.JOB_ROUTING_KEY)

    # --- one message ----------------------------------------------------------------------------

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        await self._settle(message, self._handle)

    async def _on_job(self, message: AbstractIncomingMessage) -> None:
        await self._settle(message, self._handle_job)

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.status.in_flight += 1
        # Every delivery ends acked (its outcome is durable) or nacked (it runs again later);
        # only one whose channel died is left to the broker, which redelivers it.
        try:
            try:
                await handle(message)
            except PublishError as exc:
                logger.error("Could not publish (%s); requeueing the request", exc)
                await asyncio.sleep(_REQUEUE_PAUSE_S)
                await _hand_back(message)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # A store outage, say: nothing was answered, so the job runs again once the
                # broker hands it back; the pause keeps an outage from being a hot loop.
                logger.exception("Job on delivery %s failed; requeueing it", message.delivery_tag)
                await asyncio.sleep(_REQUEUE_PAUSE_S)
                await _hand_back(message)
                return
            try:
                await message.ack()
            except Exception:
                logger.exception("Could not ack delivery %s", message.delivery_tag)
        except asyncio.CancelledError:
            if task not in self._abandoned:
                logger.info("Shutting down: handing message %s back", message.delivery_tag)
                await _hand_back(message)
            raise
        finally:
            self.status.in_flight -= 1
            self._tasks.discard(task)
            self._abandoned.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        headers: dict[str, Any] = dict(message.headers or {})
        try:
            parsed = c.parse_request(message.body)
        except c.UnanswerableMessage as exc:
            await self._park(message, headers, str(exc))
            return
        except c.MalformedRequest as exc:
            result = c.error_result(
                exc.attachment_id, exc.import_batch_id, self._config.model_name, exc.message
            )
            await self._answer(message, result, key=None)
            return

        request = parsed.request
        key = c.job_key(request)
        attempt = c.retry_count(request, headers)
        # Every delivery is checked, not only redeliveries: a producer that publishes the same
        # request twice gets one answer.
        if await asyncio.to_thread(self._ledger.was_published, key):
            logger.info("Job %s already answered; acking the duplicate", request.attachment_id)
            return

        try:
            transcript = await asyncio.wait_for(
                self._run_job(request), timeout=self._config.job_timeout_s
            )
        except ServiceError as exc:
            if exc.retryable:
                await self._retry_or_fail(message, parsed, key, attempt, exc.message)
            else:
                await self._answer(message, self._error(request, exc.message, attempt), key)
            return
        except TimeoutError:
            reason = f"Timed out after {self._config.job_timeout_s:.0f}s"
            await self._retry_or_fail(message, parsed, key, attempt, reason)
            return
        except Exception as exc:  # unknown failures get the benefit of the doubt: retry
            logger.exception("Job %s failed unexpectedly", request.attachment_id)
            reason = f"{exc.__class__.__name__}: {exc}"
            await self._retry_or_fail(message, parsed, key, attempt, reason)
            return
        await self._answer(message, c.success_result(request, transcript, attempt + 1), key)

    async def _handle_job(self, message: AbstractIncomingMessage) -> None:
        """An HTTP job: the runner records the outcome in the job store; retries go through the
        jobs' own TTL queue, exactly like the contract's."""
        assert self._jobs is not None
        try:
            job_id, attempt = c.parse_job_message(message.body)
        except c.UnanswerableMessage as exc:
            await self._park(message, dict(message.headers or {}), str(exc))
            return
        outcome, reason = await self._jobs.run(job_id, attempt, final=attempt >= c.MAX_RETRIES)
        if outcome is not Outcome.RETRY:
            self.status.results += outcome is not Outcome.SKIPPED
            return
        logger.warning(
            "Job %s failed (%s); retry %d of %d", job_id, reason, attempt + 1, c.MAX_RETRIES
        )
        retry = _job_message(job_id, attempt + 1)
        await self._publish(self._require_topology().job_retries, retry, c.JOB_RETRY_ROUTING_KEY)
        self.status.retries += 1

    def _error(
        self, request: QueuedTranscriptionRequest, text: str, attempt: int
    ) -> QueuedTranscriptionResult:
        return c.error_result(
            request.attachment_id,
            request.import_batch_id,
            self._config.model_name,
            text,
            attempts=attempt + 1,
        )

    async def _retry_or_fail(
        self,
        message: AbstractIncomingMessage,
        parsed: c.ParsedMessage,
        key: str,
        attempt: int,
        reason: str,
    ) -> None:
        request = parsed.request
        if attempt >= c.MAX_RETRIES:
            text = f"Failed after {attempt + 1} attempts: {reason}"
            await self._answer(message, self._error(request, text, attempt), key)
            return
        count = attempt + 1
        logger.warning(
            "Job %s failed (%s); retry %d of %d",
            request.attachment_id,
            reason,
            count,
            c.MAX_RETRIES,
        )
        retry = aio_pika.Message(
            body=c.retry_body(parsed.body, count),
            headers=c.retry_headers(dict(message.headers or {}), count),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
        )
        await self._publish(self._require_topology().retries, retry, c.RETRY_ROUTING_KEY)
        self.status.retries += 1

    async def _answer(
        self,
        message: AbstractIncomingMessage,
        result: QueuedTranscriptionResult,
        key: str | None,
    ) -> None:
        message_id = c.result_message_id(key or f"{result.attachment_id}-{message.delivery_tag}")
        out = aio_pika.Message(
            body=result.to_json(),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=message.correlation_id
            or message.message_id
            or str(result.attachment_id),
        )
        await self._publish(self._require_topology().results, out, c.RESULT_ROUTING_KEY)
        self.status.results += 1
        if key is None:
            return
        try:
            await asyncio.to_thread(
                self._ledger.record, key, result.attachment_id, message_id, result.success
            )
        except Exception:
            # The result is out: acking is right even so. Requeueing would publish it again.
            logger.exception("Could not record the published result of %s", result.attachment_id)
        if not result.success and self._on_failed is not None:
            try:
                await self._on_failed(key, result.error_message or "failed")
            except Exception:
                logger.exception("Could not record the failure of %s", result.attachment_id)

    async def _park(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], reason: str
    ) -> None:
        logger.warning("Parking message %s in %s: %s", message.message_id, c.REJECTED_QUEUE, reason)
        kept = {k: v for k, v in headers.items() if k not in c.DEATH_HEADERS}
        parked = aio_pika.Message(
            body=message.body,
            headers={
                **kept,
                c.REJECT_REASON_HEADER: reason,
                "x-original-routing-key": message.routing_key or "",
            },
            content_type=message.content_type,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
        )
        assert self._publisher is not None
        await self._publish(self._publisher.default_exchange, parked, c.REJECTED_QUEUE)
        self.status.parked += 1

    async def _publish(self, exchange: Any, message: aio_pika.Message, routing_key: str) -> None:
        try:
            await exchange.publish(message, routing_key=routing_key, mandatory=True)
        except Exception as exc:
            raise PublishError(f"{exc.__class__.__name__}: {exc}") from exc

    def _require_topology(self) -> topology.Topology:
        assert self._out is not None
        return self._out


async def _hand_back(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception:  # the channel is gone: the broker redelivers the message anyway
        logger.exception("Could not hand delivery %s back", message.delivery_tag)


def _job_message(job_id: str, retry_count: int = 0) -> aio_pika.Message:
    """An HTTP job on the service's own lane, first submitted or retried."""
    return aio_pika.Message(
        body=c.job_message(job_id, retry_count),
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=job_id,
    )
