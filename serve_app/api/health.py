"""Liveness and readiness for load balancers; open even when API keys are required."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.api.deps import BackendDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(backend: BackendDep) -> JSONResponse:
    healthy, details = await backend.health()
    body: dict[str, Any] = {"status": "ok" if healthy else "degraded", **details}
    return JSONResponse(status_code=200 if healthy else 503, content=body)
