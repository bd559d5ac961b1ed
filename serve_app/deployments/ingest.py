"""The queue side: consumes the Whisper-Local queue and the service's own jobs queue, and calls
the model pools by handle, so a backlog on RabbitMQ becomes load on the model replicas and
drives their autoscaling. It also delivers webhooks and applies retention."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from ingest import contract as c
from ingest.consumer import ConsumerConfig, IngestConsumer, PublishError
from serve_app.deployments.client import ModelClient
from serve_app.errors import JobCancelledError, QueueUnavailableError, ServiceError
from serve_app.fanout import ProgressFn, SegmentsFn
from serve_app.housekeeping import Housekeeper
from serve_app.jobs import CANCELLED_MESSAGE, EventWriter, JobRunner, run_cancellable
from serve_app.pipeline import admission_for, transcribe_file
from serve_app.schemas import Job, QueuedTranscriptionRequest, TranscribeOptions, Transcript
from serve_app.settings import load_settings
from serve_app.store import JobStore, ResultLedger, WebhookStore, open_engine
from serve_app.store.jobs import NewJob
from serve_app.transcriber import normalize_language

logger = logging.getLogger("ray.serve")


@serve.deployment(
    name="Ingest",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=16,
    graceful_shutdown_timeout_s=120,
)
class Ingest:
    # Serve awaits async constructors; the consumer task needs the replica's event loop.
    async def __init__(  # type: ignore[misc]
        self, pools: list[DeploymentHandle[Any]], weights: list[float]
    ) -> None:
        self._settings = settings = load_settings()
        self._client = ModelClient(pools, weights, settings)
        # Prefetch bounds how many jobs wait here, so decodes queue instead of being refused.
        self._admission = admission_for(settings, queue=None)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = await asyncio.to_thread(open_engine, settings.database)
        self._store = JobStore(engine)
        runner = JobRunner(
            self._store, self._transcribe_path, settings.spool, settings.job_timeout_sec
        )
        self._consumer = IngestConsumer(
            ConsumerConfig(
                url=settings.rabbitmq_url,
                prefetch=settings.workers_count,
                model_name=settings.whisper_model,
                job_timeout_s=settings.job_timeout_sec,
                reconnect_max_s=settings.amqp_reconnect_max_sec,
                shutdown_grace_s=settings.ingest_shutdown_grace_sec,
                result_retention=timedelta(hours=settings.result_retention_hours),
            ),
            self._run_request,
            ResultLedger(engine),
            jobs=runner,
            on_failed=lambda key, error: self._track(self._store.fail, key, error),
        )
        self._housekeeper = Housekeeper(
            self._store,
            settings,
            self._consumer.purge_old_records,
            webhook_store=WebhookStore(engine),
        )
        self._consuming = asyncio.create_task(self._consumer.run())
        self._housekeeping = asyncio.create_task(self._housekeeper.run())

    async def submit(self, job_id: str) -> None:
        """Queue an accepted HTTP job; the Gateway calls this after recording it."""
        try:
            await self._consumer.submit_job(job_id)
        except PublishError as exc:
            logger.error("Could not queue job %s: %s", job_id, exc)
            raise QueueUnavailableError() from None

    async def _transcribe_path(
        self,
        path: str,
        options: TranscribeOptions,
        on_progress: ProgressFn | None,
        on_segments: SegmentsFn | None,
    ) -> Transcript:
        async def transcribe(samples: Any, opts: TranscribeOptions) -> Transcript:
            return await self._client.transcribe(samples, opts, on_progress, on_segments)

        return await transcribe_file(path, options, self._settings, transcribe, self._admission)

    async def _run_request(self, request: QueuedTranscriptionRequest) -> Transcript:
        """A Whisper-Local job: run it, and keep the job store's record of it current."""
        options = TranscribeOptions(
            model=self._settings.whisper_model, language=normalize_language(request.language)
        )
        job_id, stored = await self._track_start(request, options)
        if stored is not None:
            # Transcribed before, its result never confirmed published (the publish failed, or
            # the replica died between the two): answer from the store, never transcribe again.
            logger.info("Job %s answered from its stored result", request.attachment_id)
            return stored
        events = EventWriter(self._store, job_id).start() if job_id else None
        work = self._transcribe_path(
            request.audio_file_path, options, events.progress if events else None, None
        )
        try:
            transcript = await (run_cancellable(self._store, job_id, work) if job_id else work)
        except ServiceError as exc:
            # A final failure is recorded when its error result is published (on_failed).
            if exc.retryable and request.retry_count < c.MAX_RETRIES:
                await self._track(self._store.requeue, job_id, exc.message)
            raise
        finally:
            if events is not None:
                await events.close()
        await self._track(self._store.complete, job_id, transcript)
        return transcript

    async def _track_start(
        self, request: QueuedTranscriptionRequest, options: TranscribeOptions
    ) -> tuple[str | None, Transcript | None]:
        """The job's record, started; with its transcript when it completed before."""
        key = c.job_key(request)
        new = NewJob(
            source="amqp",
            audio_path=request.audio_file_path,
            options=options,
            model=self._settings.whisper_model,
            external_id=str(request.attachment_id),
            idempotency_key=f"amqp:{key}",
            id=key,
        )
        try:
            job, _ = await asyncio.to_thread(self._store.create, new)
            started = await asyncio.to_thread(self._store.start, job.id)
            current: Job = (
                started if started is not None else await asyncio.to_thread(self._store.get, job.id)
            )
        except Exception:  # the record is informative; the AMQP contract does not depend on it
            logger.exception("Could not record AMQP job %s", request.attachment_id)
            return None, None
        if current.status == "cancelled":  # cancelled between attempts: the retry does not run
            raise JobCancelledError(CANCELLED_MESSAGE)
        if current.status == "completed" and current.result is not None:
            return job.id, current.result
        return job.id, None

    async def _track(
        self, update: Callable[[str, Any], object], job_id: str | None, value: Any
    ) -> None:
        """Apply a job store update to an AMQP job's record, if it has one; never fails."""
        if job_id is None:
            return
        try:
            await asyncio.to_thread(update, job_id, value)
        except Exception:
            logger.exception("Could not update the record of AMQP job %s", job_id)

    async def status(self) -> dict[str, Any]:
        # Counters are this replica's; connection state is shared by all of them.
        replica = serve.get_replica_context().replica_id.unique_id
        return {**self._consumer.status.as_dict(), "replica": replica}

    def check_health(self) -> None:
        # A broker outage is not a replica fault (restarting would not help); a dead loop is.
        if self._consuming.done():
            raise RuntimeError(f"consumer loop ended: {self._consuming.exception()!r}")

    async def __del__(self) -> None:
        self._housekeeping.cancel()
        await self._consumer.stop()
