"""/v1/realtime?intent=transcription: live audio over a WebSocket, OpenAI's realtime
transcription protocol (serve_app/realtime). The route owns the socket's bounds: sessions per
replica, idle time, session length, event size; the session owns the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from serve_app.api.auth import KeyRing
from serve_app.api.deps import Backend
from serve_app.api.errors import code_for
from serve_app.capacity.admission import StreamLimit
from serve_app.capacity.fair import Tenant
from serve_app.errors import ServiceBusyError, ServiceError
from serve_app.realtime import protocol
from serve_app.realtime.pacing import LiveLoad, LivePacing
from serve_app.realtime.session import LiveSession
from serve_app.realtime.turns import silero
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.store.jobs import EVERYONE, Viewer

logger = logging.getLogger("ray.serve")
router = APIRouter()

_POLICY_VIOLATION, _TRY_AGAIN_LATER = 1008, 1013


class LiveSessions:
    """Open sessions of one replica, and the interim decodes they may have in flight at once."""

    def __init__(self, limit: int, interims: int) -> None:
        self.open = StreamLimit(limit, "live sessions", "try again shortly")
        self.load = LiveLoad(interims)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, intent: str | None = None) -> None:
    backend: Backend = websocket.app.state.backend
    sessions: LiveSessions = websocket.app.state.live_sessions
    await websocket.accept()
    if intent != "transcription":
        message = (
            "This service takes transcription sessions only: connect with ?intent=transcription."
        )
        await _refuse(websocket, message, "invalid_intent", _POLICY_VIOLATION)
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(sessions.open.take())
        except ServiceBusyError as exc:
            await _refuse(websocket, str(exc), "session_limit_reached", _TRY_AGAIN_LATER)
            return
        try:
            await backend.backlog.admit(_tenant(websocket))
        except ServiceError as exc:
            await _refuse(websocket, str(exc), "server_busy", _TRY_AGAIN_LATER)
            return
        await _serve(websocket, backend)


def _tenant(websocket: WebSocket) -> Tenant:
    """Whose fair share the session's work counts in: its key's."""
    keys: KeyRing = websocket.app.state.keys
    return keys.tenant(websocket.scope.get("state", {}).get("viewer") or EVERYONE)


async def _refuse(websocket: WebSocket, message: str, code: str, close_code: int) -> None:
    await websocket.send_text(json.dumps(protocol.error_event(message, code=code)))
    await websocket.close(close_code, message[:120])


async def _serve(websocket: WebSocket, backend: Backend) -> None:
    settings = backend.settings
    started = time.monotonic()
    lock = asyncio.Lock()

    async def send(event: dict[str, Any]) -> None:
        # The receive loop and the session's decoder both send; frames must not interleave.
        async with lock:
            if websocket.application_state != WebSocketState.CONNECTED:
                return
            try:
                await websocket.send_text(json.dumps(event))
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                logger.info("Live session: the client went away while sent to: %r", exc)

    viewer: Viewer | None = websocket.scope.get("state", {}).get("viewer")
    tenant = _tenant(websocket)

    async def decode(audio: Any, options: TranscribeOptions) -> Transcript:
        return await backend.transcribe(audio, options.model_copy(update={"tenant": tenant}))

    pacing = LivePacing(max_rate=settings.realtime_max_audio_rate)
    expires = protocol.expiry(started, settings.realtime_max_session_sec)
    sessions: LiveSessions = websocket.app.state.live_sessions
    session = LiveSession(
        send, decode, settings, silero(), pacing, expires, load=sessions.load, codes=code_for
    )
    logger.info("Live session %s opened (owner %s)", session.id, viewer.owner if viewer else "-")
    await session.start()
    max_bytes = settings.realtime_max_event_kb * 1024
    try:
        while True:
            left = started + settings.realtime_max_session_sec - time.monotonic()
            wait = min(settings.realtime_idle_timeout_sec, max(left, 0.0))
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                # that lands as the receive completes, and the server's cancel then hits later.
                async with asyncio.timeout(wait):
                    message = await websocket.receive()
            except TimeoutError:
                expired = left <= settings.realtime_idle_timeout_sec
                await _end(websocket, send, expired, settings.realtime_idle_timeout_sec)
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text") if message.get("text") is not None else message.get("bytes")
            if data is None:
                continue
            if len(data) > max_bytes:
                await send(
                    protocol.error_event(
                        f"The event is {len(data)} bytes; the most one may be is {max_bytes}.",
                        code="event_too_large",
                    )
                )
                continue
            await session.handle(data)
    finally:
        await session.close()
        logger.info("Live session %s closed", session.id)


async def _end(websocket: WebSocket, send: Any, expired: bool, idle_s: float) -> None:
    if expired:
        message, code = "The session reached its maximum duration.", "session_expired"
    else:
        message, code = f"No event for {idle_s:g} s: the session is closed.", "session_idle_timeout"
    await send(protocol.error_event(message, code=code))
    await websocket.close(1000, message)
