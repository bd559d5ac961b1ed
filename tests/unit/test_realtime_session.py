"""A live session without the network: client events in, server events out, decoded by the
real tiny.en model and the real Silero VAD (or, for the protocol's error paths, by a decoder
that hears nothing)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydub import AudioSegment

from serve_app.errors import InvalidOptionError, ReplicaUnavailableError
from serve_app.media.audio import AudioArray
from serve_app.model.transcriber import Transcriber
from serve_app.realtime.pacing import LivePacing
from serve_app.realtime.pcm import LiveAudio
from serve_app.realtime.protocol import LOGPROBS
from serve_app.realtime.session import LiveSession
from serve_app.realtime.turns import silero
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import Settings
from tests.support.live import Transcripts, first_turns, long_turns
from tests.support.speech import long_recording, synthesize, word_error_rate

MANUAL = {"type": "session.update", "session": {"type": "transcription"}}
MANUAL["session"]["audio"] = {"input": {"turn_detection": None}}  # type: ignore[index]


class Client:
    def __init__(self, decode: Any, pacing: LivePacing | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.seen = Transcripts()
        self.session = LiveSession(
            self._send, decode, Settings(whisper_model="tiny.en"), silero(), pacing
        )

    async def _send(self, event: dict[str, Any]) -> None:
        json.dumps(event)  # what the route will do with it
        self.events.append(event)
        self.seen.take(event)

    async def say(self, **event: Any) -> dict[str, Any]:
        before = len(self.events)
        await self.session.handle(json.dumps(event))
        return self.events[before] if len(self.events) > before else {}

    async def one_turn(self, data: bytes, chunk: int) -> None:
        """``data`` appended ``chunk`` bytes at a time, committed, and transcribed."""
        for at in range(0, len(data), chunk):
            audio = base64.b64encode(data[at : at + chunk]).decode()
            await self.say(type="input_audio_buffer.append", audio=audio)
        await self.say(type="input_audio_buffer.commit")
        await self.wait_for("conversation.item.input_audio_transcription.completed")

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(e["type"] == kind for e in self.events) < count:
            assert time.monotonic() < deadline, f"no {count} x {kind} within {timeout}s"
            await asyncio.sleep(0.05)


async def hears_nothing(audio: AudioArray, options: TranscribeOptions) -> Transcript:
    return Transcript(
        text="", language="en", language_probability=1, duration=0, segments=[], model="tiny.en"
    )


def pcm(seconds: float) -> str:
    tone = (np.sin(np.arange(int(24000 * seconds)) / 10) * 3000).astype("<i2")
    return base64.b64encode(tone.tobytes()).decode()


async def test_bad_events_get_errors_and_the_session_stays_usable() -> None:
    client = Client(hears_nothing)
    await client.session.start()
    try:
        assert client.events[0]["type"] == "session.created"
        assert (await client.say(**MANUAL))["type"] == "session.updated"
        for garbage in ("{not json", "[" * 100_000 + "]" * 100_000, b"\xff\xfe"):
            await client.session.handle(garbage)
            assert client.events[-1]["error"]["code"] == "invalid_json"
        unknown = await client.say(type="response.create", event_id="evt_1")
        assert unknown["type"] == "error"
        assert unknown["error"]["event_id"] == "evt_1" and unknown["error"]["param"] == "type"
        bad = await client.say(type="input_audio_buffer.append", audio="%%%", event_id="evt_2")
        assert bad["error"]["param"] == "audio" and bad["error"]["event_id"] == "evt_2"
        empty = await client.say(type="input_audio_buffer.commit")
        assert empty["error"]["code"] == "input_audio_buffer_commit_empty"
        model = await client.say(
            type="session.update",
            session={
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "x"}}},
            },
        )
        assert model["type"] == "error" and "not served" in model["error"]["message"]
        # Still usable: audio in, a commit, and the turn completes.
        assert await client.say(type="input_audio_buffer.append", audio=pcm(0.5)) == {}
        assert (await client.say(type="input_audio_buffer.commit"))["type"] == (
            "input_audio_buffer.committed"
        )
        await client.wait_for("conversation.item.input_audio_transcription.completed")
        kinds = [e["type"] for e in client.events[-3:]]
        assert kinds == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.completed",
        ]
        assert client.events[-1]["usage"] == {
            "type": "duration",
            "seconds": pytest.approx(0.5, abs=0.01),
        }
    finally:
        await client.session.close()


async def test_audio_faster_than_the_rate_allows_is_refused() -> None:
    client = Client(hears_nothing, LivePacing(burst_s=2, max_rate=1))
    await client.session.start()
    try:
        assert await client.say(type="input_audio_buffer.append", audio=pcm(1.5)) == {}
        refused = await client.say(type="input_audio_buffer.append", audio=pcm(1.5))
        assert refused["error"]["code"] == "rate_limit_exceeded"
        cleared = await client.say(type="input_audio_buffer.clear")
        assert cleared["type"] == "input_audio_buffer.cleared"
    finally:
        await client.session.close()


async def test_a_spoken_conversation_gives_deltas_while_each_turn_is_spoken(
    tiny: Transcriber, tmp_path: Path
) -> None:
    """Two turns streamed at real speed through server VAD: deltas come before each turn's
    speech stops, the completed text is exactly what the deltas built up, and it is within
    0.15 WER of the same audio transcribed as a file."""

    async def decode(audio: AudioArray, options: TranscribeOptions) -> Transcript:
        return await asyncio.to_thread(tiny.transcribe, audio, options)

    clip = long_turns(tmp_path)
    client = Client(decode)
    await client.session.start()
    try:
        started = time.monotonic()
        for n, audio in enumerate(clip.appends(100)):
            await client.say(type="input_audio_buffer.append", audio=audio)
            # Real time: each append waits until its audio would have been spoken.
            await asyncio.sleep(max(0.0, started + (n + 1) * 0.1 - time.monotonic()))
        await client.wait_for("conversation.item.input_audio_transcription.completed", 2)
    finally:
        await client.session.close()
    seen = client.seen
    assert not seen.errors
    items = seen.items()
    assert len(items) == 2
    for item in items:
        assert seen.deltas_before_stop(item) >= 1, "no delta while the turn was spoken"
        assert "".join(seen.deltas[item]) == seen.completed[item]
        kinds = [kind for kind, at in seen.order if at == item and not kind.endswith(".delta")]
        assert kinds == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.completed",
        ]
    # What the model makes of the same audio as a file.
    whole = LiveAudio("audio/pcm").push(clip.pcm)  # 24 -> 16 kHz
    as_file = tiny.transcribe(whole, TranscribeOptions(model="tiny.en")).text
    live = " ".join(seen.completed[item] for item in items)
    assert word_error_rate(as_file, live) <= 0.15, (as_file, live)


class Flaky:
    """A decoder that raises ``errors`` in turn (the last one for as long as ``down``), then
    hears nothing."""

    def __init__(self, errors: list[Exception], down: bool = False) -> None:
        self.left, self.down = list(errors), down

    async def __call__(self, audio: AudioArray, options: TranscribeOptions) -> Transcript:
        if self.down:
            raise self.left[-1]
        if self.left:
            raise self.left.pop(0)
        return await hears_nothing(audio, options)


async def commit_a_turn(client: Client) -> None:
    await client.say(type="input_audio_buffer.append", audio=pcm(0.5))
    await client.say(type="input_audio_buffer.commit")


@pytest.mark.parametrize(
    ("errors", "ends"),
    [
        # A replica lost twice: the third decode, on another replica, completes the turn.
        ([ReplicaUnavailableError("gone"), ReplicaUnavailableError("gone")], "completed"),
        ([ReplicaUnavailableError("gone")], "down"),  # for longer than the window
        ([InvalidOptionError("no")], "failed"),  # not worth another try
        ([RuntimeError("bug")], "failed"),  # logged; the client hears only that it failed
    ],
)
async def test_a_failed_decode_is_retried_elsewhere_or_fails_its_turn_alone(
    errors: list[Exception], ends: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serve_app.realtime.decoder._RETRY_PAUSE_S", 0.01)
    monkeypatch.setattr("serve_app.realtime.decoder._RETRY_WINDOW_S", 0.3)
    decoder = Flaky(errors, down=ends == "down")
    ends = "failed" if ends == "down" else ends
    client = Client(decoder)
    await client.session.start()
    try:
        await client.say(**MANUAL)
        await commit_a_turn(client)
        await client.wait_for(f"conversation.item.input_audio_transcription.{ends}")
        if ends == "failed":
            error = client.events[-1]["error"]
            assert error["type"] == "server_error"
            assert "bug" not in error["message"]
            decoder.down = False
        # The session goes on: the next turn completes.
        await commit_a_turn(client)
        done = 1 + (ends == "completed")
        await client.wait_for("conversation.item.input_audio_transcription.completed", done)
    finally:
        await client.session.close()


async def test_a_minute_long_turn_is_decoded_in_windows_whisper_can_hear_and_loses_no_words(
    tiny: Transcriber, tmp_path: Path
) -> None:
    """No commit for a minute of speech, sent at 3x real time: later decodes start after the
    committed words (at a sentence's end where there is one), so none hears more than
    Whisper's 30 s, and no stretch of speech is lost at the cuts. LocalAgreement over many
    windows of tiny.en differs from its one-pass file transcription by 0.11-0.17 WER here
    (words two decodes never agreed on); a cut that dropped audio would lose sentences."""
    wav, _ = long_recording("en_long", tmp_path)
    minute = AudioSegment.from_wav(wav)[:60_000].set_frame_rate(24000).set_sample_width(2)
    pcm = minute.set_channels(1).raw_data
    heard: list[float] = []

    async def decode(audio: AudioArray, options: TranscribeOptions) -> Transcript:
        heard.append(len(audio) / 16000)
        return await asyncio.to_thread(tiny.transcribe, audio, options)

    client = Client(decode)
    await client.session.start()
    try:
        await client.say(**MANUAL)
        started, chunk = time.monotonic(), 4800  # 100 ms, sent at 3x real time
        for n, at in enumerate(range(0, len(pcm), chunk)):
            audio = base64.b64encode(pcm[at : at + chunk]).decode()
            await client.say(type="input_audio_buffer.append", audio=audio)
            await asyncio.sleep(max(0.0, started + (n + 1) * 0.1 / 3 - time.monotonic()))
        await client.say(type="input_audio_buffer.commit")
        await client.wait_for("conversation.item.input_audio_transcription.completed", timeout=120)
    finally:
        await client.session.close()
    assert not client.seen.errors
    (item,) = client.seen.items()
    live = client.seen.completed[item]
    assert "".join(client.seen.deltas[item]) == live
    interim = heard[:-1]
    assert len(interim) >= 5 and max(interim) <= 30, heard
    as_file = tiny.transcribe(LiveAudio("audio/pcm").push(pcm), TranscribeOptions()).text
    assert word_error_rate(as_file, live) <= 0.25, (as_file, live)


async def test_a_phone_call_in_g711_through_the_beta_update_is_transcribed(
    tiny: Transcriber, tmp_path: Path
) -> None:
    """A telephony client of the beta protocol: 8 kHz mu-law, `transcription_session.update`."""
    clip = first_turns(tmp_path, 1)
    eight_khz = AudioSegment(clip.pcm, frame_rate=24000, sample_width=2, channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # the standard library's G.711 encoder, a reference while it lasts

        mulaw = audioop.lin2ulaw(eight_khz.set_frame_rate(8000).raw_data, 2)

    async def decode(audio: AudioArray, options: TranscribeOptions) -> Transcript:
        return await asyncio.to_thread(tiny.transcribe, audio, options)

    client = Client(decode)
    await client.session.start()
    try:
        updated = await client.say(
            type="transcription_session.update",
            session={"input_audio_format": "g711_ulaw", "turn_detection": None},
        )
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["input_audio_format"] == "g711_ulaw"
        assert updated["session"]["turn_detection"] is None
        await client.one_turn(mulaw, 800)  # 100 ms of 8 kHz mu-law at a time
    finally:
        await client.session.close()
    (item,) = client.seen.items()
    said = client.seen.completed[item]
    assert word_error_rate(clip.turns[0].text, said) <= 0.2, said
    assert client.events[-1]["usage"]["seconds"] == pytest.approx(len(mulaw) / 8000, abs=0.05)


async def test_keywords_and_logprobs_in_a_live_session(tiny: Transcriber, speech_dir: Path) -> None:
    """A manual-commit session with keywords and include logprobs: the rare terms come out,
    and every delta and the completed event carry the log probabilities of their tokens."""

    async def decode(audio: AudioArray, options: TranscribeOptions) -> Transcript:
        return await asyncio.to_thread(tiny.transcribe, audio, options)

    terms = ["Zyntrovia", "Vexlar", "Quetiapine"]
    spoken = AudioSegment.from_wav(synthesize("en_rare_terms", speech_dir))
    pcm = spoken.set_frame_rate(24000).set_channels(1).set_sample_width(2).raw_data
    client = Client(decode)
    await client.session.start()
    try:
        bad = await client.say(
            type="session.update",
            session={
                "type": "transcription",
                "audio": {"input": {"transcription": {"keywords": ["x" * 65]}}},
            },
        )
        assert bad["error"]["param"] == "session.audio.input.transcription.keywords"
        session = {**MANUAL["session"], "include": [LOGPROBS]}
        session["audio"] = {"input": {"turn_detection": None, "transcription": {"keywords": terms}}}
        updated = await client.say(type="session.update", session=session)
        assert updated["session"]["audio"]["input"]["transcription"]["keywords"] == terms
        await client.one_turn(pcm, 9600)  # 200 ms of 24 kHz PCM16 at a time
    finally:
        await client.session.close()
    prefix = "conversation.item.input_audio_transcription."
    deltas = [e for e in client.events if e["type"] == prefix + "delta"]
    completed = next(e for e in client.events if e["type"] == prefix + "completed")
    text = completed["transcript"]
    assert sum(term.lower() in text.lower() for term in terms) >= 2, text
    assert deltas and all("logprobs" in e for e in deltas)
    tokens = [t["token"] for e in deltas for t in e["logprobs"]]
    assert "".join(tokens).strip() == text.strip()
    assert [t["token"] for t in completed["logprobs"]] == tokens
    assert all(t["logprob"] <= 0 for t in completed["logprobs"])
