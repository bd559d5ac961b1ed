"""One live transcription session: client events in, OpenAI's server events out.

Audio is converted to 16 kHz as it arrives and cut into turns, by server VAD or by the client's
commits; ``decoder.TurnDecoder`` turns them into deltas and final transcripts. Plain asyncio:
the WebSocket route feeds it text frames and sends what it emits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable

from serve_app.errors import InvalidOptionError, ServiceError
from serve_app.media.audio import SAMPLE_RATE
from serve_app.model_options import (
    check_keywords,
    check_languages,
    normalize_language,
    served_model,
)
from serve_app.realtime import protocol
from serve_app.realtime.buffer import LiveBuffer
from serve_app.realtime.decoder import (
    MIN_AUDIO,
    Decode,
    Send,
    Turn,
    TurnDecoder,
)
from serve_app.realtime.pacing import LiveLoad, LivePacing
from serve_app.realtime.pcm import LiveAudio
from serve_app.realtime.protocol import Codes, Event, ProtocolError, SessionConfig, no_code
from serve_app.realtime.turns import WINDOW, SpeechModel, SpeechStream, TurnDetector
from serve_app.schemas import MAX_PROMPT_CHARS, TranscribeOptions
from serve_app.settings import Settings

logger = logging.getLogger("ray.serve")
_HELD_WINDOWS = 4  # audio an open turn holds undecoded, in decode windows, before dropping some
_VAD_INLINE_WINDOWS = 64  # more than 2 s at once (a file sent in one go): off the event loop


class AudioRate:
    """A token bucket of audio seconds: a burst at any speed, then ``max_rate`` x real time."""

    def __init__(self, pacing: LivePacing, clock: Callable[[], float] = time.monotonic) -> None:
        self._pacing, self._clock = pacing, clock
        self._tokens, self._at = pacing.burst_s, clock()

    def take(self, seconds: float) -> bool:
        now = self._clock()
        refill = (now - self._at) * self._pacing.max_rate
        self._tokens = min(self._pacing.burst_s, self._tokens + refill)
        self._at = now
        if seconds > self._tokens:
            return False
        self._tokens -= seconds
        return True


class LiveSession:
    def __init__(
        self,
        send: Send,
        decode: Decode,
        settings: Settings,
        speech_model: SpeechModel,
        pacing: LivePacing | None = None,
        expires_at: float = 0.0,
        load: LiveLoad | None = None,
        codes: Codes = no_code,
    ) -> None:
        self.id = protocol.new_id("sess")
        self._send, self._decode, self._settings = send, decode, settings
        self._speech_model = speech_model
        self._pacing = pacing or LivePacing()
        self._rate = AudioRate(self._pacing)
        self._expires_at = expires_at
        self.config = SessionConfig()
        # The config's model and language as the model takes them, checked when they are set.
        self._model = served_model(None, settings)
        self._language: str | None = None
        self._audio = LiveAudio(self.config.format)
        self._buffer = LiveBuffer()
        self._previous_item: str | None = None
        self._decoder = TurnDecoder(
            self.id, send, decode, self._options, self._buffer, self._pacing, load, codes
        )
        self._codes = codes
        self._vad_mode()

    async def start(self) -> None:
        session = protocol.session_object(self.id, self.config, self._expires_at)
        await self._send(protocol.event("session.created", session=session))
        self._decoder.start()

    async def close(self) -> None:
        await self._decoder.close()

    @property
    def _turn(self) -> Turn | None:
        return self._decoder.open

    @_turn.setter
    def _turn(self, turn: Turn | None) -> None:
        self._decoder.open = turn

    def _options(self, prompt: str | None) -> TranscribeOptions | None:
        if not self.config.transcribe:
            return None
        if self.config.prompt:
            prompt = f"{self.config.prompt} {prompt or ''}".strip()
        return TranscribeOptions(
            model=self._model,
            language=self._language,
            prompt=prompt[-MAX_PROMPT_CHARS:] if prompt else None,
            word_timestamps=True,
            keywords=self.config.keywords,
            languages=self.config.languages,
            logprobs=protocol.LOGPROBS in self.config.include,
        )

    async def handle(self, raw: str | bytes) -> None:
        """One client event; anything wrong with it is answered with an ``error`` event."""
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            await self._send(
                protocol.error_event("The event is not valid JSON.", code="invalid_json")
            )
            return
        client_id = message.get("event_id") if isinstance(message, dict) else None
        client_id = client_id if isinstance(client_id, str) else None
        try:
            await self._dispatch(message)
        except ProtocolError as exc:
            await self._send(
                protocol.error_event(
                    exc.message, code=exc.code, param=exc.param, client_event_id=client_id
                )
            )
        except ServiceError as exc:
            param, code = getattr(exc, "param", None), self._codes(exc)
            await self._send(
                protocol.error_event(str(exc), code=code, param=param, client_event_id=client_id)
            )

    async def _dispatch(self, message: object) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError(
                "Missing required parameter: 'type'.", "missing_required_parameter", "type"
            )
        kind = message["type"]
        if kind in ("session.update", "transcription_session.update"):
            await self._update(message)
        elif kind == "input_audio_buffer.append":
            await self._append(message)
        elif kind == "input_audio_buffer.commit":
            await self._commit()
        elif kind == "input_audio_buffer.clear":
            await self._clear()
        else:
            shown = kind[:64]
            raise ProtocolError(
                f"Invalid value: '{shown}'. Supported values are: "
                + ", ".join(protocol.CLIENT_EVENTS)
                + ".",
                param="type",
            )

    # --- client events ------------------------------------------------------------------------

    async def _update(self, message: Event) -> None:
        config = self.config.updated(message)
        model = served_model(config.model, self._settings)  # ModelNotServedError: model_not_found
        try:
            language = normalize_language(config.language)
            config.keywords = check_keywords(config.keywords)
            config.languages = check_languages(config.languages, language)
        except InvalidOptionError as exc:
            where = f"session.audio.input.transcription.{exc.param or 'language'}"
            raise ProtocolError(str(exc), param=where) from None
        format_changed = config.format != self.config.format
        vad_changed = config.turn_detection != self.config.turn_detection
        self.config, self._model, self._language = config, model, language
        if format_changed:
            self._audio = LiveAudio(config.format)
        if vad_changed:
            self._vad_mode()
        if message["type"] == "transcription_session.update":
            session = protocol.beta_session_object(self.id, config, self._expires_at)
            await self._send(protocol.event("transcription_session.updated", session=session))
        else:
            session = protocol.session_object(self.id, config, self._expires_at)
            await self._send(protocol.event("session.updated", session=session))

    async def _append(self, message: Event) -> None:
        audio = message.get("audio")
        if not isinstance(audio, str):
            raise ProtocolError(
                "Missing required parameter: 'audio'.", "missing_required_parameter", "audio"
            )
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(
                "Invalid 'audio': expected base64-encoded audio bytes.", param="audio"
            ) from None
        if not self._rate.take(len(data) / self._audio.bytes_per_second()):
            raise ProtocolError(
                f"Audio is arriving faster than {self._pacing.max_rate:g}x real time; "
                "this append was dropped.",
                code="rate_limit_exceeded",
                param="audio",
            )
        samples = self._audio.push(data)
        first = self._buffer.end
        self._buffer.append(samples)
        if self._detector is not None and self._speech is not None:
            if len(samples) > _VAD_INLINE_WINDOWS * WINDOW:
                probabilities = await asyncio.to_thread(self._speech.push, samples)
            else:
                probabilities = self._speech.push(samples)
            for edge in self._detector.feed(probabilities):
                if edge.kind == "started":
                    await self._started(edge.sample)
                elif edge.kind == "stopped":
                    await self._stopped(edge.sample)
                elif self._turn is not None and edge.kind == "paused":
                    self._decoder.pause(self._turn, edge.sample)
                elif self._turn is not None:
                    self._decoder.resume(self._turn)
        elif self._turn is None and len(samples):
            self._turn = self._new_turn(first)
        self._keep_what_is_needed()
        self._decoder.wake()

    async def _commit(self) -> None:
        turn = self._turn
        if turn is None or self._buffer.end - turn.start < MIN_AUDIO:
            have = 0 if turn is None else (self._buffer.end - turn.start) * 1000 / SAMPLE_RATE
            raise ProtocolError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {have:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        if self._detector is not None:
            self._detector.reset(self._buffer.end)
        await self._end(turn, self._buffer.end)

    async def _clear(self) -> None:
        if self._turn is not None:
            self._decoder.resume(self._turn)  # an early final decode of it is moot
            self._turn.dropped = True
            self._turn = None
        self._buffer.clear()
        if self._detector is not None:
            self._detector.reset(self._buffer.end)
        await self._send(protocol.event("input_audio_buffer.cleared"))

    # --- turns --------------------------------------------------------------------------------

    def _vad_mode(self) -> None:
        vad = self.config.turn_detection
        self._speech = SpeechStream(self._speech_model) if vad else None
        first_window = -(-self._buffer.end // WINDOW)
        self._detector = TurnDetector(vad, first_window) if vad else None
        if self._detector is not None and self._turn is not None:
            self._detector.speaking = True  # the open turn now ends at the next silence

    @staticmethod
    def _new_turn(start: int) -> Turn:
        return Turn(protocol.new_id("item"), start, offset=start, decoded_to=start)

    async def _started(self, sample: int) -> None:
        if self._turn is None:
            self._turn = self._new_turn(sample)
        await self._send(
            protocol.event(
                "input_audio_buffer.speech_started",
                audio_start_ms=sample * 1000 // SAMPLE_RATE,
                item_id=self._turn.item_id,
            )
        )

    async def _stopped(self, sample: int) -> None:
        turn = self._turn
        if turn is None:
            return
        await self._send(
            protocol.event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=sample * 1000 // SAMPLE_RATE,
                item_id=turn.item_id,
            )
        )
        await self._end(turn, sample)

    async def _end(self, turn: Turn, at: int) -> None:
        """The turn is committed: announce its item, then queue its final decode."""
        turn.end = at
        turn.audio = self._buffer.slice(turn.offset, at)
        self._turn = None
        previous, self._previous_item = self._previous_item, turn.item_id
        await self._send(
            protocol.event(
                "input_audio_buffer.committed", item_id=turn.item_id, previous_item_id=previous
            )
        )
        await self._send(
            protocol.event(
                "conversation.item.added",
                item=protocol.user_item(turn.item_id),
                previous_item_id=previous,
            )
        )
        self._decoder.ended(turn)

    def _keep_what_is_needed(self) -> None:
        """Drop audio no turn will decode: before the open turn, or all but the padding a turn
        that starts next may reach back for (and the window the VAD has not judged yet)."""
        if self._turn is not None:
            if (self._buffer.end - self._turn.offset) / SAMPLE_RATE > _HELD_WINDOWS * (
                self._pacing.window_s
            ):
                # Decodes lag far behind (the pools are down or swamped): memory stays bounded.
                dropped = self._turn.drop_unheard(self._buffer.end, self._pacing)
                logger.warning(
                    "Live session %s: decodes fell behind; %.1f s of audio dropped unheard",
                    self.id,
                    dropped,
                )
            self._buffer.drop_before(self._turn.offset)
            return
        padding = self.config.turn_detection.prefix_padding_ms if self.config.turn_detection else 0
        self._buffer.drop_before(self._buffer.end - padding * SAMPLE_RATE // 1000 - 2 * WINDOW)
