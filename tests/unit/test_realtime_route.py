"""The /v1/realtime WebSocket in process: keys, intent, the socket's bounds, and a turn through
the backend (a stand-in for the model pools)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from serve_app.api.app import create_api
from tests.support.api_standin import KEY_A, StandIn, make_backend

URL = "/v1/realtime?intent=transcription"
AUTH = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture
def app_with(tmp_path: Path, clip: Any) -> Any:
    def make(**settings: Any) -> tuple[TestClient, StandIn]:
        backend = make_backend(tmp_path, clip("en_office", ".mp3"))
        backend.settings = backend.settings.model_copy(update=settings)
        backend.release.set()  # the stand-in answers at once
        return TestClient(create_api(backend)), backend

    return make


def receive(socket: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(socket.receive_text())
    return event


def assert_refused(socket: Any, code: str, close_code: int) -> None:
    """An ``error`` event with ``code``, then the socket closed with ``close_code``."""
    assert receive(socket)["error"]["code"] == code
    with pytest.raises(WebSocketDisconnect) as closed:
        socket.receive_text()
    assert closed.value.code == close_code


def test_a_socket_without_a_valid_key_is_refused_at_the_handshake(app_with: Any) -> None:
    client, _ = app_with()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect(URL, headers=headers),
        ):
            pass
        assert denied.value.status_code == 401
        assert denied.value.json()["error"]["code"] == "invalid_api_key"


def test_only_transcription_sessions_are_taken(app_with: Any) -> None:
    client, _ = app_with()
    with client.websocket_connect("/v1/realtime?model=gpt-realtime", headers=AUTH) as socket:
        assert_refused(socket, "invalid_intent", 1008)


def test_sessions_past_the_replicas_limit_are_told_to_come_back(app_with: Any) -> None:
    client, _ = app_with(realtime_max_sessions=1)
    with client.websocket_connect(URL, headers=AUTH) as first:
        assert receive(first)["type"] == "session.created"
        with client.websocket_connect(URL, headers=AUTH) as second:
            assert_refused(second, "session_limit_reached", 1013)
    with client.websocket_connect(URL, headers=AUTH) as again:  # the first one's place is free
        assert receive(again)["type"] == "session.created"


def test_an_idle_session_is_closed_with_a_reason(app_with: Any) -> None:
    client, _ = app_with(realtime_idle_timeout_sec=0.5)
    with client.websocket_connect(URL, headers=AUTH) as socket:
        assert receive(socket)["type"] == "session.created"
        assert_refused(socket, "session_idle_timeout", 1000)


def test_a_session_ends_at_its_longest_however_busy(app_with: Any) -> None:
    client, _ = app_with(realtime_max_session_sec=1.0)
    with client.websocket_connect(URL, headers=AUTH) as socket:
        created = receive(socket)
        assert created["session"]["expires_at"] <= time.time() + 1.5
        quiet = base64.b64encode(b"\x00\x00" * 2400).decode()  # 0.1 s of silence
        for _ in range(15):  # an event every 0.1 s for 1.5 s: never idle
            socket.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": quiet}))
            time.sleep(0.1)  # the client's pace, as a microphone's
        assert_refused(socket, "session_expired", 1000)


def test_an_oversized_event_is_refused_and_the_session_goes_on(app_with: Any) -> None:
    client, _ = app_with(realtime_max_event_kb=16)
    with client.websocket_connect(URL, headers=AUTH) as socket:
        assert receive(socket)["type"] == "session.created"
        socket.send_text("x" * 17 * 1024)
        assert receive(socket)["error"]["code"] == "event_too_large"
        unknown = {"type": "transcription", "audio": {"input": {"transcription": {"model": "x"}}}}
        socket.send_text(json.dumps({"type": "session.update", "session": unknown}))
        assert receive(socket)["error"]["code"] == "model_not_found"  # OpenAI's code for it
        manual = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        socket.send_text(json.dumps({"type": "session.update", "session": manual}))
        assert receive(socket)["type"] == "session.updated"
        fifth = base64.b64encode(b"\x10\x00" * 4800).decode()  # 0.2 s: 12.8 kB of base64
        socket.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": fifth}))
        socket.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        kinds = [receive(socket)["type"] for _ in range(3)]
        assert kinds == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.completed",
        ]
