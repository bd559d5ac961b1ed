"""Assemble the FastAPI app a Gateway replica serves."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from serve_app.api import errors, health, jobs, openai, realtime
from serve_app.api.auth import ApiKeyAuth, KeyRing, get_viewer
from serve_app.api.deps import Backend
from serve_app.api.limits import BodySizeLimit

# Multipart framing and the small form fields ride on top of the file itself.
_MULTIPART_OVERHEAD = 1024 * 1024


def create_api(backend: Backend) -> FastAPI:
    app = FastAPI(
        title="whisper-serve",
        summary="Speech to text with faster-whisper on Ray Serve; OpenAI-compatible",
        version="0.1.0",
    )
    app.state.backend = backend
    settings = backend.settings
    app.state.keys = keys = KeyRing(settings, backend.owner_secret)
    app.state.live_sessions = realtime.LiveSessions(
        settings.realtime_max_sessions, settings.realtime_interim_decodes
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_file_size_bytes + _MULTIPART_OVERHEAD)
    # Added last, so it runs first: no body is read for a request without a valid key.
    app.add_middleware(ApiKeyAuth, keys=keys)
    errors.install(app)
    # /health stays open for load balancers and orchestrators.
    authenticated = [Depends(get_viewer)]
    app.include_router(openai.router, dependencies=authenticated)
    app.include_router(jobs.router, dependencies=authenticated)
    app.include_router(realtime.router)  # a WebSocket: ApiKeyAuth checks its handshake
    app.include_router(health.router)
    return app
