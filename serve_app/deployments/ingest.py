"""The AMQP ingest: consumes the Whisper-Local queue and calls the model pools by handle, so a
backlog on RabbitMQ becomes load on the model replicas and drives their autoscaling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from ingest.consumer import ConsumerConfig, IngestConsumer
from serve_app.deployments.client import ModelClient
from serve_app.pipeline import transcribe_file
from serve_app.schemas import QueuedTranscriptionRequest, TranscribeOptions, Transcript
from serve_app.settings import load_settings
from serve_app.store import ResultLedger, make_engine
from serve_app.transcriber import normalize_language

logger = logging.getLogger("ray.serve")
_PURGE_EVERY_S = 3600


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
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        ledger = await asyncio.to_thread(lambda: ResultLedger(make_engine(settings.database)))
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
            self._run,
            ledger,
        )
        self._consuming = asyncio.create_task(self._consumer.run())
        self._purging = asyncio.create_task(self._purge_periodically())

    async def _run(self, request: QueuedTranscriptionRequest) -> Transcript:
        options = TranscribeOptions(
            model=self._settings.whisper_model, language=normalize_language(request.language)
        )
        return await transcribe_file(
            request.audio_file_path, options, self._settings, self._client.transcribe
        )

    async def _purge_periodically(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                removed = await asyncio.to_thread(self._consumer.purge_old_records)
                if removed:
                    logger.info("Purged %d old result records", removed)
            await asyncio.sleep(_PURGE_EVERY_S)

    async def status(self) -> dict[str, Any]:
        # Counters are this replica's; connection state is shared by all of them.
        replica = serve.get_replica_context().replica_id.unique_id
        return {**self._consumer.status.as_dict(), "replica": replica}

    def check_health(self) -> None:
        # A broker outage is not a replica fault (restarting would not help); a dead loop is.
        if self._consuming.done():
            raise RuntimeError(f"consumer loop ended: {self._consuming.exception()!r}")

    async def __del__(self) -> None:
        self._purging.cancel()
        await self._consumer.stop()
