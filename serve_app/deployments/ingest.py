"""The queue side: consumes the Whisper-Local queue and the service's own jobs queue, and calls
the model pools by handle, so a backlog on RabbitMQ becomes load on the model replicas and
drives their autoscaling. It also delivers webhooks, publishes what the outbox holds, and
applies retention.

Data flow of one AMQP job: ``ingest.consumer`` (message -> lane) -> ``JobService`` (admit) ->
``JobRunner`` (claim, run, record) -> ``_transcribe_path`` here (audio checked, model pools)
-> back to the lane, which publishes the result."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from datetime import timedelta
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from sqlalchemy import Engine

from ingest.consumer import IngestConsumer
from ingest.transport import PublishError, TransportConfig
from serve_app.capacity.intake import IngestReport, queued_audio_s
from serve_app.deployments import telemetry
from serve_app.deployments.client import DiarizerClient, ModelClient
from serve_app.deployments.logs import share_serve_handlers
from serve_app.errors import QueueUnavailableError
from serve_app.jobs.exports import ResultExport
from serve_app.jobs.fairness import FairTurns
from serve_app.jobs.housekeeping import Housekeeper
from serve_app.jobs.runner import JobRunner, RunPolicy
from serve_app.jobs.service import JobService
from serve_app.media.spool import Spool
from serve_app.media.storage import storage_for
from serve_app.periodic import every
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import load_settings
from serve_app.store import (
    BacklogStore,
    ClaimStore,
    JobStore,
    Outbox,
    ResultLedger,
    UnitStore,
    WebhookStore,
    listening_changes,
    make_engine,
    open_engine,
)
from serve_app.store.secrets import service_secret, weights_by_owner
from serve_app.transcription.pipeline import FileRequest, admission_for, transcribe_file
from serve_app.transcription.service import TranscriptionService

logger = logging.getLogger("ray.serve")


# Options the same in every installation; app.py sets what its decoders reserve
# (DECODE_NUM_CPUS), the YAML files size the rest, its shutdown grace included (longer on a
# cluster, whose slowest pool takes longer over a unit).
@serve.deployment(
    name="Ingest",
    max_ongoing_requests=16,
)
class Ingest:
    # Serve awaits async constructors; the consumer task needs the replica's event loop.
    async def __init__(  # type: ignore[misc]
        self,
        pools: list[DeploymentHandle[Any]],
        weights: list[float],
        diarizer: DeploymentHandle[Any] | None = None,
    ) -> None:
        share_serve_handlers()
        telemetry.install()
        self._settings = settings = load_settings()
        # For the model pools' autoscaling: the pools by preference, the backlog as last read.
        self._pools = [(h.deployment_name, w) for h, w in zip(pools, weights, strict=True)]
        self._backlog_s: float | None = None
        self._transcription = TranscriptionService(
            ModelClient(pools, weights), settings, DiarizerClient(diarizer) if diarizer else None
        )
        self._storage = storage_for(settings)
        spool = Spool.from_settings(settings, self._storage)
        # Prefetch bounds how many jobs wait here, so decodes queue instead of being refused.
        self._admission = admission_for(settings, queue=None)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Objects fetched whole before decoding (MP4, M4A) wait here, not on the root disk.
        tempfile.tempdir = str(settings.tmp_dir)
        engine = await asyncio.to_thread(open_engine, settings.database)
        # A running job's cancel, and webhooks, are woken by changes (PostgreSQL NOTIFY).
        store = JobStore(engine, listening_changes(engine))
        runner = JobRunner(
            store,
            ClaimStore(engine),
            UnitStore(engine),
            self._transcribe_path,
            spool,
            RunPolicy(
                timeout_s=settings.job_timeout_sec,
                lease_s=settings.job_lease_sec,
                max_unfinished=settings.job_max_unfinished,
            ),
            renewals=ClaimStore(make_engine(settings.database, pool_size=2)),
            turns=await self._turns(engine) if settings.fair_shares else None,
            exports=ResultExport.from_settings(settings, self._storage),
        )
        ledger = ResultLedger(engine)
        jobs = JobService(store, runner, ledger, Outbox(engine), settings.whisper_model)
        self._consumer = IngestConsumer(
            TransportConfig(
                url=settings.rabbitmq_url,
                prefetch=settings.workers_count,
                reconnect_max_s=settings.amqp_reconnect_max_sec,
                shutdown_grace_s=settings.ingest_shutdown_grace_sec,
                submit_timeout_s=settings.amqp_publish_timeout_sec,
            ),
            jobs,
            settings.whisper_model,
        )
        retention = timedelta(hours=settings.result_retention_hours)
        self._housekeeper = Housekeeper(
            store,
            settings,
            lambda: ledger.purge(retention),
            webhook_store=WebhookStore(engine),
            publish_job=self._consumer.submit_job,
            spool=spool,
        )
        self._consuming = asyncio.create_task(self._consumer.run())
        self._housekeeping = asyncio.create_task(self._housekeeper.run())
        self._watching = asyncio.create_task(
            self._consumer.watch_queues(settings.amqp_depth_poll_sec)
        )
        self._reading = asyncio.create_task(
            self._read_backlog(BacklogStore(engine), settings.amqp_depth_poll_sec)
        )

    async def _turns(self, engine: Engine) -> FairTurns:
        """Fair shares of the job slots, with API_KEY_WEIGHTS by the keys' owner ids."""
        secret = await asyncio.to_thread(service_secret, engine)
        weights = weights_by_owner(self._settings.api_key_weights, secret)
        return FairTurns(BacklogStore(engine), weight=lambda tenant: weights.get(tenant, 1.0))

    async def submit(self, job_id: str) -> None:
        """Queue an accepted HTTP job; the Gateway calls this after recording it."""
        try:
            await self._consumer.submit_job(job_id)
        except PublishError as exc:
            logger.error("Could not queue job %s: %s", job_id, exc)
            raise QueueUnavailableError() from None

    async def _transcribe_path(self, request: FileRequest) -> Transcript:
        async def transcribe(samples: Any, opts: TranscribeOptions) -> Transcript:
            return await self._transcription.transcribe(
                samples, opts, request.on_progress, request.on_segments, request.checkpoint
            )

        return await transcribe_file(
            request.path,
            request.options,
            self._settings,
            transcribe,
            self._admission,
            self._storage,
        )

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What ``serve_app.deployments.autoscaling`` scales the Ingest and the model pools
        on; the depth and the backlog as last read (every AMQP_DEPTH_POLL_SEC)."""
        status = self._consumer.status
        depth = sum(sum(lane.values()) for lane in status.queues.values())
        report = IngestReport(
            depth,
            status.in_flight,
            self._settings.workers_count,
            self._backlog_s,
            self._settings.scale_target_drain_sec,
            self._pools,
        )
        return report.as_metrics()

    async def _read_backlog(self, store: BacklogStore, every_s: float) -> None:
        """The backlog's audio seconds every ``every_s``; while the store is down the pools
        keep the last figure."""

        def read(waiting: int) -> float:
            typical = store.typical_duration()
            return queued_audio_s(store.pending(typical), waiting, typical)

        async def step() -> None:
            waiting = self._consumer.status.queues.get("requests", {}).get("waiting", 0)
            self._backlog_s = await asyncio.to_thread(read, waiting)

        await every(every_s, step, "read the backlog for autoscaling", logger)

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
        self._watching.cancel()
        self._reading.cancel()
        await self._consumer.stop()
