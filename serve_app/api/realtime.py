"""/v1/realtime?intent=transcription: live audio over a WebSocket, OpenAI's realtime
transcription protocol (serve_app/realtime). The route owns the socket's bounds: sessions per
replica, idle time, session length, event size; the session owns the protocol."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from serve_app.api.deps import Backend
from serve_app.api.errors import code_for
from serve_app.errors import ServiceError
from serve_app.realtime import protocol
from serve_app.realtime.decoder import LiveLoad, LivePacing
from serve_app.realtime.session import LiveSession
from serve_app.realtime.turns import silero
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.store.jobs import Viewer

logger = logging.getLogger("ray.serve")
router = APIRouter()

_POLICY_VIOLATION, _TRY_AGAIN_LATER = 1008, 1013


class LiveSessions:
    """Open sessions of one replica, and the interim decodes they may have in flight at once."""

    def __init__(self, limit: int, interims: int) -> None:
        self.limit, self.open = limit, 0
        self.load = LiveLoad(interims)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, intent: str | None = None) -> None:
    backend: Backend = websocket.app.state.backend
    sessions: LiveSessions = websocket.app.state.live_sessions
    await websocket.accept()
    refusal = _refusal(intent, sessions)
    if refusal is None:
        try:
            await backend.backlog.admit()
        except ServiceError as exc:
            refusal = (str(exc), "server_busy", _TRY_AGAIN_LATER)
    if refusal is not None:
        message, code, close_code = refusal
        await websocket.send_text(json.dumps(protocol.error_event(message, code=code)))
        await websocket.close(close_code, message[:120])
        return
    sessions.open += 1
    try:
        await _serve(websocket, backend)
    finally:
        sessions.open -= 1


def _refusal(intent: str | None, sessions: LiveSessions) -> tuple[str, str, int] | None:
    if intent != "transcription":
        return (
            "This service takes transcription sessions only: connect with ?intent=transcription.",
            "invalid_intent",
            _POLICY_VIOLATION,
        )
    if sessions.open >= sessions.limit:
        return (
            f"{sessions.open} live sessions are open here, the most this replica keeps; "
            "try again shortly.",
            "session_limit_reached",
            _TRY_AGAIN_LATER,
        )
    return None


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

    async def decode(audio: Any, options: TranscribeOptions) -> Transcript:
        return await backend.transcribe(audio, options)

    pacing = LivePacing(max_rate=settings.realtime_max_audio_rate)
    expires = protocol.expiry(started, settings.realtime_max_session_sec)
    sessions: LiveSessions = websocket.app.state.live_sessions
    session = LiveSession(
        send, decode, settings, silero(), pacing, expires, load=sessions.load, codes=code_for
    )
    viewer: Viewer | None = websocket.scope.get("state", {}).get("viewer")
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
