"""Liveness and readiness for load balancers; open even when API keys are required, with
the details behind an admin key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.api.deps import BackendDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request, backend: BackendDep) -> JSONResponse:
    ready, details = await backend.health()
    # 503 only when no model pool can take work: HTTP transcription needs neither the broker
    # nor the object storage, so their outages show as "degraded" with their details, not as
    # a failed probe.
    broker_up = details.get("broker", {}).get("status", "up") == "up"
    storage_up = details.get("storage", {}).get("status", "up") != "down"
    status = "ok" if ready and broker_up and storage_up else "degraded" if ready else "down"
    body: dict[str, Any] = {"status": status}
    # Pools, backlog and broker describe every tenant's load: for admin keys (or everyone,
    # on a service without keys), not for whoever can reach the port.
    if getattr(request.state, "sees_all", False):
        body.update(details)
    return JSONResponse(status_code=200 if ready else 503, content=body)
