"""OpenAI's realtime transcription protocol: the client events this service takes, the session
configuration they change, and the server events it sends, with OpenAI's field names.

GA shape: ``session.update`` whose ``session.type`` is ``transcription`` and whose settings sit
under ``audio.input``. The beta shape (``transcription_session.update``, ``input_audio_format``
and friends at the top of ``session``) is accepted too and answered in kind.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.errors import ServiceError
from serve_app.realtime.pcm import BETA_NAMES
from serve_app.realtime.turns import ServerVad
from serve_app.schemas import MAX_PROMPT_CHARS

Event = dict[str, Any]
# The edge's name for a domain error, as OpenAI's ``code`` (a string or null).
Codes = Callable[[ServiceError], str | None]
M = TypeVar("M", bound=BaseModel)
LOGPROBS = "item.input_audio_transcription.logprobs"
CLIENT_EVENTS = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


class ProtocolError(Exception):
    """A client event this session cannot take; sent back as an ``error`` event."""

    def __init__(
        self, message: str, code: str | None = "invalid_value", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def no_code(exc: ServiceError) -> str | None:
    return None


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


# --- what a client may send -------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Format(_Strict):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: Literal[24000] | None = None


class _Transcription(_Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    # Checked by the session (model_options), as on the HTTP routes.
    keywords: list[str] | None = None
    languages: list[str] | None = None


class _TurnDetection(_Strict):
    type: Literal["server_vad", "semantic_vad"]
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=100, le=10000)
    # Response settings of speech-to-speech sessions: no response is ever made here.
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None


class _NoiseReduction(_Strict):
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class _AudioInput(_Strict):
    format: _Format | None = None
    transcription: _Transcription | None = None
    turn_detection: _TurnDetection | None = None
    noise_reduction: _NoiseReduction | None = None


class _Audio(_Strict):
    input: _AudioInput | None = None


class _Session(_Strict):
    type: Literal["transcription"]
    audio: _Audio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    # A session object read back from session.created may be sent as it is.
    id: str | None = None
    object: str | None = None
    expires_at: int | None = None


class _BetaSession(_Strict):
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: _Transcription | None = None
    turn_detection: _TurnDetection | None = None
    input_audio_noise_reduction: _NoiseReduction | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    modalities: list[str] | None = None


# --- the session's settings -------------------------------------------------------------------


@dataclass
class SessionConfig:
    format: str = "audio/pcm"
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    delay: str | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None
    transcribe: bool = True  # a client may set transcription to null: turns, but no text
    turn_detection: ServerVad | None = field(default_factory=ServerVad)
    noise_reduction: dict[str, Any] | None = None
    include: list[str] = field(default_factory=list)

    def updated(self, event: Event) -> SessionConfig:
        """The settings after a GA ``session.update`` or a beta ``transcription_session.update``;
        fields the update leaves out keep their values, a field sent as null is turned off."""
        raw = event.get("session")
        if not isinstance(raw, dict):
            raise ProtocolError(
                "Missing required parameter: 'session'.", "missing_required_parameter", "session"
            )
        if event["type"] == "transcription_session.update":
            return self._apply(_beta_to_ga(_parse(_BetaSession, raw, "session")))
        if raw.get("type") != "transcription":
            raise ProtocolError(
                "This is a transcription session: 'session.type' must be 'transcription'.",
                param="session.type",
            )
        return self._apply(_parse(_Session, raw, "session"))

    def _apply(self, session: _Session) -> SessionConfig:
        config = SessionConfig(**{**self.__dict__, "include": list(self.include)})
        if session.include is not None:
            config.include = list(session.include)
        audio_input = session.audio.input if session.audio else None
        if audio_input is None:
            return config
        sent = audio_input.model_fields_set
        if audio_input.format is not None:
            config.format = audio_input.format.type
        if "transcription" in sent:
            transcription = audio_input.transcription
            config.transcribe = transcription is not None
            if transcription is not None:
                for name in transcription.model_fields_set:
                    setattr(config, name, getattr(transcription, name))
        if "turn_detection" in sent:
            config.turn_detection = _vad(audio_input.turn_detection)
        if "noise_reduction" in sent:
            noise = audio_input.noise_reduction
            config.noise_reduction = noise.model_dump(exclude_none=True) if noise else None
        return config


def _parse(model: type[M], raw: dict[str, Any], where: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join([where, *(str(part) for part in first["loc"])])
        if first["type"] == "extra_forbidden":
            message = f"Unknown parameter: '{param}'."
            raise ProtocolError(message, "unknown_parameter", param) from None
        raise ProtocolError(f"Invalid '{param}': {first['msg']}.", "invalid_value", param) from None


def _vad(turn: _TurnDetection | None) -> ServerVad | None:
    if turn is None:
        return None
    if turn.type == "semantic_vad":
        raise ProtocolError(
            "semantic_vad is not supported here; use server_vad or null.",
            param="session.audio.input.turn_detection.type",
        )
    return ServerVad(turn.threshold, turn.prefix_padding_ms, turn.silence_duration_ms)


def _beta_to_ga(beta: _BetaSession) -> _Session:
    sent = beta.model_fields_set
    audio_input: dict[str, Any] = {}
    if beta.input_audio_format is not None:
        audio_input["format"] = {"type": BETA_NAMES[beta.input_audio_format]}
    if "input_audio_transcription" in sent:
        audio_input["transcription"] = beta.input_audio_transcription
    if "turn_detection" in sent:
        audio_input["turn_detection"] = beta.turn_detection
    if "input_audio_noise_reduction" in sent:
        audio_input["noise_reduction"] = beta.input_audio_noise_reduction
    return _Session(
        type="transcription", audio=_Audio(input=_AudioInput(**audio_input)), include=beta.include
    )


# --- what the server sends --------------------------------------------------------------------


def event(kind: str, **fields: Any) -> Event:
    return {"type": kind, "event_id": new_id("event"), **fields}


def session_object(session_id: str, config: SessionConfig, expires_at: float) -> Event:
    vad = config.turn_detection
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "type": "transcription",
        "expires_at": int(expires_at),
        "include": list(config.include),
        "audio": {
            "input": {
                "format": _format(config.format),
                "transcription": _transcription(config),
                "noise_reduction": config.noise_reduction,
                "turn_detection": _turn_detection(vad),
            }
        },
    }


def beta_session_object(session_id: str, config: SessionConfig, expires_at: float) -> Event:
    beta_names = {ga: beta for beta, ga in BETA_NAMES.items()}
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "expires_at": int(expires_at),
        "include": list(config.include),
        "input_audio_format": beta_names[config.format],
        "input_audio_transcription": _transcription(config),
        "input_audio_noise_reduction": config.noise_reduction,
        "turn_detection": _turn_detection(config.turn_detection),
        "modalities": ["text"],
    }


def _format(name: str) -> dict[str, Any]:
    return {"type": name, "rate": 24000} if name == "audio/pcm" else {"type": name}


def _transcription(config: SessionConfig) -> dict[str, Any] | None:
    if not config.transcribe:
        return None
    shown = {"model": config.model, "language": config.language, "prompt": config.prompt}
    for name in ("delay", "keywords", "languages"):
        if getattr(config, name) is not None:
            shown[name] = getattr(config, name)
    return shown


def _turn_detection(vad: ServerVad | None) -> dict[str, Any] | None:
    if vad is None:
        return None
    return {
        "type": "server_vad",
        "threshold": vad.threshold,
        "prefix_padding_ms": vad.prefix_padding_ms,
        "silence_duration_ms": vad.silence_duration_ms,
    }


def user_item(item_id: str) -> Event:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_audio", "transcript": None}],
    }


def error_event(
    message: str,
    kind: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    client_event_id: str | None = None,
) -> Event:
    return event(
        "error",
        error={
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    )


def expiry(started: float, max_session_s: float) -> float:
    return time.time() - (time.monotonic() - started) + max_session_s
