"""The HTTP ingress: checks and decodes audio, then hands samples to a model pool."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.app import create_api
from serve_app.capacity.admission import StreamLimit
from serve_app.capacity.backlog import Backlog
from serve_app.capacity.fair import Tenant
from serve_app.capacity.pools import would_serve
from serve_app.deployments import telemetry
from serve_app.deployments.client import DiarizerClient, ModelClient, running_replicas
from serve_app.deployments.logs import share_serve_handlers
from serve_app.errors import QueueUnavailableError, ServiceError
from serve_app.media.audio import AudioArray
from serve_app.media.spool import Spool
from serve_app.media.storage import StorageWatch, storage_for
from serve_app.periodic import Recent, every
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import load_settings
from serve_app.store import (
    BacklogStore,
    JobStore,
    listening_changes,
    open_engine,
    service_secret,
)
from serve_app.transcription.diarizer import not_installed
from serve_app.transcription.pipeline import admission_for
from serve_app.transcription.port import SegmentsFn
from serve_app.transcription.service import TranscriptionService

_STATUS_TIMEOUT_S = 3
_STATUS_STALE_S = 30.0  # how long /health may go on Serve's last status
_STORAGE_CHECK_S = 10.0  # how often the object storage is asked whether it answers
logger = logging.getLogger("ray.serve")


# Options the same in every installation; app.py sets what its decoders reserve
# (DECODE_NUM_CPUS), the YAML files size the rest (ARCHITECTURE.md).
@serve.deployment(
    name="Gateway",
    max_ongoing_requests=256,  # SSE subscribers hold a request each while they listen
)
@serve.ingress()
class Gateway:
    # Serve awaits async constructors; the backlog's metrics task needs the replica's loop.
    async def __init__(  # type: ignore[misc]
        self,
        pools: list[DeploymentHandle[Any]],
        weights: list[float],
        ingest: DeploymentHandle[Any] | None = None,
        diarizer: DeploymentHandle[Any] | None = None,
    ) -> None:
        share_serve_handlers()  # the model client's lines: pools woken, replicas failed
        telemetry.install()
        self.settings = load_settings()
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Uploads spool here (Starlette uses the default temp dir), not on the root disk.
        tempfile.tempdir = str(self.settings.tmp_dir)
        # An HTTP client holds a connection: with no model replica anywhere it waits only
        # while a pool is starting, POOL_START_WAIT_SEC at most, and then gets a 503.
        self.diarization = diarizer is not None
        self._pools = ModelClient(
            pools, weights, can_wait=False, start_wait_s=self.settings.pool_start_wait_sec
        )
        self._speakers = DiarizerClient(diarizer) if diarizer else None
        self._models = TranscriptionService(self._pools, self.settings, self._speakers)
        self.admission = admission_for(self.settings, self.settings.decode_queue)
        self.streams = StreamLimit(self.settings.sse_max_subscribers)
        self.storage = storage_for(self.settings)
        self.spool = Spool.from_settings(self.settings, self.storage)
        self._ingest = ingest
        self._serve_status = Recent(
            lambda: asyncio.to_thread(serve.status), _STATUS_STALE_S, "read Serve's status", logger
        )
        engine = await asyncio.to_thread(open_engine, self.settings.database)
        # SSE streams are woken by job changes from every replica (PostgreSQL NOTIFY).
        self.store = JobStore(engine, listening_changes(engine))
        self.owner_secret = await asyncio.to_thread(service_secret, engine)
        self.backlog = Backlog(
            BacklogStore(engine),
            self.settings.max_backlog_audio_sec,
            self._models.in_flight,
            asked=lambda: {pool.name: pool.asked for pool in self._pools.router.pools},
            total_bound_s=self.settings.max_total_backlog_audio_sec,
        )
        self._watching = asyncio.create_task(self.backlog.watch())
        self._storage_watch = StorageWatch.for_settings(self.settings, self.storage)
        if self._storage_watch is not None:
            check = self._storage_watch.check
            self._checking_storage = asyncio.create_task(
                every(_STORAGE_CHECK_S, check, "check the object storage", logger)
            )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self)

    async def transcribe(
        self,
        audio: AudioArray,
        options: TranscribeOptions,
        on_segments: SegmentsFn | None = None,
    ) -> Transcript:
        # Segments wanted as they come: the client streams the response.
        return await self._models.transcribe(
            audio, options, on_segments=on_segments, live=on_segments is not None
        )

    async def voice(self, audio: AudioArray, tenant: Tenant | None = None) -> list[float] | None:
        if self._speakers is None:
            raise not_installed()
        return await self._speakers.voice(audio, tenant)

    async def submit(self, job_id: str) -> None:
        if self._ingest is None:
            raise QueueUnavailableError(
                "Async jobs need the queue side: deploy the app with `ingest: true`"
            )
        try:
            await self._ingest.submit.remote(job_id)
        except ServiceError:
            raise
        except Exception as exc:
            logger.error("Could not queue job %s: %r", job_id, exc)
            raise QueueUnavailableError() from exc

    async def health(self) -> tuple[bool, dict[str, Any]]:
        status = await self._serve_status.get()
        app = status.applications.get(serve.get_replica_context().app_name) if status else None
        pools: dict[str, Any] = {}
        absent = "MISSING" if status else "UNKNOWN"  # not deployed, or Serve did not say
        for pool in self._pools.router.pools:
            deployment = app.deployments.get(pool.name) if app else None
            pools[pool.name] = {
                "status": str(deployment.status.value) if deployment else absent,
                "replicas": dict(deployment.replica_states) if deployment else {},
                "in_flight": pool.in_flight,
            }
        ready = would_serve({name: info["replicas"] for name, info in pools.items()})
        details: dict[str, Any] = {
            "models": self.settings.served_models,
            "pools": pools,
        }
        if backlog := await self.backlog.read():
            details["backlog"] = backlog.summary()
        if self._storage_watch is not None:
            details["storage"] = self._storage_watch.summary()
        if self._ingest is not None:
            details["broker"] = await self._broker_status()
            ingest = app.deployments.get("Ingest") if app else None
            details["broker"]["ingest_replicas"] = running_replicas(ingest)
        return ready, details

    async def _broker_status(self) -> dict[str, Any]:
        assert self._ingest is not None
        try:
            status: dict[str, Any] = await asyncio.wait_for(
                self._ingest.status.remote(), _STATUS_TIMEOUT_S
            )
        except Exception as exc:
            logger.warning("Ingest status unavailable: %r", exc)
            return {"status": "unknown"}
        # The broker's errors and the replicas' ids stay in the logs. The queues' depths are
        # the broker's, the same whichever Ingest replica read them.
        return {"status": status.get("status", "unknown"), "queues": status.get("queues", {})}
