"""Calling the model pools from another deployment, with Ray's failures made domain errors."""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.audio import AudioArray
from serve_app.errors import ReplicaUnavailableError, ServiceError
from serve_app.pools import Pool, PoolRouter
from serve_app.schemas import TranscribeOptions, Transcript


class ModelClient:
    def __init__(self, pools: list[DeploymentHandle[Any]], weights: list[float]) -> None:
        self.router = PoolRouter(
            [
                Pool(handle.deployment_name, handle, weight)
                for handle, weight in zip(pools, weights, strict=True)
            ]
        )

    async def transcribe(self, audio: AudioArray, options: TranscribeOptions) -> Transcript:
        with self.router.lease() as pool:
            handle = pool.target.options(multiplexed_model_id=options.model or "")
            try:
                result: Transcript = await handle.transcribe.remote(audio, options)
            except ServiceError:
                raise  # a domain error raised in the replica keeps its type across Ray
            except Exception as exc:  # replica died, unreachable, overloaded: worth a retry
                raise ReplicaUnavailableError(
                    f"Model replica in {pool.name} failed: {exc.__class__.__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}"
                ) from exc
            return result
