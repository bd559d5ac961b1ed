"""The HTTP ingress: checks and decodes audio, then hands samples to a model pool."""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.app import create_api
from serve_app.audio import AudioArray
from serve_app.pools import Pool, PoolRouter
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import load_settings


@serve.deployment(
    name="Gateway",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=64,
)
@serve.ingress()
class Gateway:
    def __init__(self, pools: list[DeploymentHandle[Any]], weights: list[float]) -> None:
        self.settings = load_settings()
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Uploads spool here (Starlette uses the default temp dir), not on the root disk.
        tempfile.tempdir = str(self.settings.tmp_dir)
        self._router = PoolRouter(
            [
                Pool(handle.deployment_name, handle, weight)
                for handle, weight in zip(pools, weights, strict=True)
            ]
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self)

    async def transcribe(self, audio: AudioArray, options: TranscribeOptions) -> Transcript:
        with self._router.lease() as pool:
            handle = pool.target.options(multiplexed_model_id=options.model or "")
            result: Transcript = await handle.transcribe.remote(audio, options)
            return result

    async def health(self) -> tuple[bool, dict[str, Any]]:
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(serve.get_replica_context().app_name)
        pools: dict[str, Any] = {}
        for pool in self._router.pools:
            deployment = app.deployments.get(pool.name) if app else None
            pools[pool.name] = {
                "status": str(deployment.status.value) if deployment else "MISSING",
                "replicas": dict(deployment.replica_states) if deployment else {},
                "in_flight": pool.in_flight,
            }
        # Ready when some pool can take work now: a running replica, or a settled deployment
        # (scaled to zero, it starts one on the first request).
        healthy = any(
            info["replicas"].get("RUNNING", 0) > 0 or info["status"] == "HEALTHY"
            for info in pools.values()
        )
        return healthy, {"models": self.settings.served_models, "pools": pools}
