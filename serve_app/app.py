"""The Serve application: ``serve run serve_config.yaml`` imports ``build_app`` from here.

Gateway (HTTP in, audio checked) -> one or more model pools (CPU, GPU) -> transcript out.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, Field
from ray.serve import Application, Deployment

from serve_app.deployments.gateway import Gateway
from serve_app.deployments.model import TranscriberDeployment


class PoolArgs(BaseModel):
    name: str = "TranscriberCPU"
    # None: WHISPER_DEVICE decides.
    device: Literal["cpu", "cuda", "auto"] | None = None
    weight: float = Field(1.0, gt=0)


class AppArgs(BaseModel):
    pools: list[PoolArgs] = Field(default_factory=lambda: [PoolArgs()], min_length=1)


def build_app(args: dict[str, Any] | None = None) -> Application:
    parsed = AppArgs.model_validate(args or {})
    # serve.deployment turns these classes into Deployments; Ray's stubs do not say so.
    transcriber = cast(Deployment, TranscriberDeployment)
    gateway = cast(Deployment, Gateway)
    pools = [transcriber.options(name=pool.name).bind(device=pool.device) for pool in parsed.pools]
    return gateway.bind(pools, [pool.weight for pool in parsed.pools])


app = build_app()
