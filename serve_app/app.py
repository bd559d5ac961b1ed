"""The Serve application: ``serve run serve_config.yaml`` imports ``build_app`` from here.

Gateway (HTTP in, audio checked) -> one or more model pools (CPU, GPU) -> transcript out.
Ingest (RabbitMQ in, path and audio checked) -> the same pools -> result on RabbitMQ.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, cast

from pydantic import BaseModel, Field
from ray.serve import Application, Deployment

from serve_app.deployments.diarizer import DiarizerDeployment
from serve_app.deployments.gateway import Gateway
from serve_app.deployments.ingest import Ingest
from serve_app.deployments.model import TranscriberDeployment
from serve_app.settings import load_settings
from serve_app.transcription.diarizer import INSTALL_HINT
from serve_app.transcription.diarizer import available as diarization_installed

logger = logging.getLogger("ray.serve")


class PoolArgs(BaseModel):
    name: str = "TranscriberCPU"
    # None: WHISPER_DEVICE decides.
    device: Literal["cpu", "cuda", "auto"] | None = None
    weight: float = Field(1.0, gt=0)


class AppArgs(BaseModel):
    pools: list[PoolArgs] = Field(default_factory=lambda: [PoolArgs()], min_length=1)
    # The RabbitMQ ingest (Whisper-Local contract); off for an HTTP-only service.
    ingest: bool = True
    # The Diarizer deployment, when the `diarize` extra is installed (else diarize=true is 422).
    diarization: bool = True


def build_app(args: dict[str, Any] | None = None) -> Application:
    # Replicas read their own settings; checking them here too makes `serve run` stop at once
    # with the variable's name instead of retrying replicas that cannot start.
    settings = load_settings()
    parsed = AppArgs.model_validate(args or {})
    logs = {"encoding": settings.log_format.upper()}
    # serve.deployment turns these classes into Deployments; Ray's stubs do not say so.
    transcriber = cast(Deployment, TranscriberDeployment)
    # The Gateway and the Ingest decode: Ray counts their decoders' CPUs and audio memory.
    decoders = {
        "num_cpus": settings.decode_num_cpus,
        "memory": int(settings.max_decoded_audio_mb * 1024 * 1024),
    }
    gateway = cast(Deployment, Gateway).options(logging_config=logs, ray_actor_options=decoders)
    pools = [
        transcriber.options(name=pool.name, logging_config=logs).bind(device=pool.device)
        for pool in parsed.pools
    ]
    weights = [pool.weight for pool in parsed.pools]
    diarizer = None
    if parsed.diarization and diarization_installed():
        diarizer = (
            cast(Deployment, DiarizerDeployment)
            .options(
                logging_config=logs,
                ray_actor_options={"num_cpus": settings.diarize_num_cpus},
                # Calls wait in the replica, where they are let in by fair shares between
                # keys (its own bounds refuse more); a call queued at a caller is not.
                max_ongoing_requests=settings.diarize_max_queued + 1,
                max_queued_requests=settings.diarize_max_queued,
            )
            .bind()
        )
    elif parsed.diarization:
        logger.warning("Diarization is not installed (%s): diarize=true gets 422", INSTALL_HINT)
    ingest = None
    if parsed.ingest:
        ingest = (
            cast(Deployment, Ingest)
            .options(logging_config=logs, ray_actor_options=decoders)
            .bind(pools, weights, diarizer)
        )
    return gateway.bind(pools, weights, ingest, diarizer)
