"""Live audio for realtime tests and benchmarks: the diarization conversation's first turns as
24 kHz PCM16 (OpenAI's realtime input format), cut into appends of a fixed length, and what a
client makes of the server's events."""

from __future__ import annotations

import base64
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydub import AudioSegment
from pydub.silence import detect_leading_silence

from tests.support.conversation import SpokenTurn, conversation

RATE = 24000


@dataclass(frozen=True)
class LiveAudioClip:
    pcm: bytes  # 24 kHz mono PCM16
    turns: list[SpokenTurn]
    trailing_s: float  # silence after the last turn, enough for server VAD to end it

    def spoken(self, floor_db: float = -45.0) -> list[tuple[float, float]]:
        """Each turn's first and last 10 ms of sound above ``floor_db`` (dBFS): where speech
        really starts and ends, without the silence espeak-ng puts around it."""
        samples = np.frombuffer(self.pcm, "<i2").astype(np.float32) / 32768
        frame = RATE // 100
        frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
        loud = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-9) > floor_db
        bounds = []
        for turn in self.turns:
            first, last = int(turn.start * 100), int(turn.end * 100)
            heard = np.flatnonzero(loud[first:last]) + first
            bounds.append((heard[0] / 100, (heard[-1] + 1) / 100))
        return bounds

    def wav(self, path: Path, start_s: float = 0.0, end_s: float | None = None) -> Path:
        """The clip (or its part from ``start_s`` to ``end_s``) as a WAV file at ``path``."""
        end = len(self.pcm) if end_s is None else int(end_s * RATE) * 2
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(self.pcm[int(start_s * RATE) * 2 : end])
        return path

    def appends(self, chunk_ms: int = 100) -> Iterator[str]:
        """Base64 payloads of ``chunk_ms`` each, as a microphone client sends them."""
        size = RATE * 2 * chunk_ms // 1000
        for start in range(0, len(self.pcm), size):
            yield base64.b64encode(self.pcm[start : start + size]).decode()


def first_turns(out_dir: Path, count: int = 2, trailing_s: float = 1.5) -> LiveAudioClip:
    wav, turns = conversation(out_dir)
    kept = turns[:count]
    audio = AudioSegment.from_wav(wav)[: int(kept[-1].end * 1000)]
    audio += AudioSegment.silent(duration=int(trailing_s * 1000), frame_rate=audio.frame_rate)
    pcm = audio.set_frame_rate(RATE).set_channels(1).set_sample_width(2).raw_data
    return LiveAudioClip(pcm, kept, trailing_s)


def long_turns(out_dir: Path, trailing_s: float = 1.5) -> LiveAudioClip:
    """Two turns of about 9 s: Alice's first two lines of the conversation, then Beth's, each
    pair joined by a 250 ms breath. Long enough that a turn's first delta comes well before
    its end on a busy 2-core machine (a conversation turn is 4-5 s: the first delta needs two
    decodes that agree, about 2 s in, up to 4 s while the model replica is loaded)."""
    _, turns = conversation(out_dir)
    audio = AudioSegment.silent(duration=300)
    kept: list[SpokenTurn] = []
    for speaker, lines in (("alice", (0, 3)), ("beth", (1, 4))):
        start = len(audio) / 1000  # pydub counts milliseconds
        for n, line in enumerate(lines):
            spoken = AudioSegment.from_wav(out_dir / f"turn_{line}.wav")
            if n < len(lines) - 1:  # espeak-ng ends a line with ~300 ms of silence
                spoken = spoken[: len(spoken) - detect_leading_silence(spoken.reverse(), -45)]
                spoken += AudioSegment.silent(duration=250, frame_rate=spoken.frame_rate)
            audio += spoken
        text = " ".join(turns[line].text for line in lines)
        kept.append(SpokenTurn(speaker, text, start, len(audio) / 1000))
        audio += AudioSegment.silent(duration=1200)
    audio += AudioSegment.silent(duration=int(trailing_s * 1000))
    pcm = audio.set_frame_rate(RATE).set_channels(1).set_sample_width(2).raw_data
    return LiveAudioClip(pcm, kept, trailing_s)


@dataclass
class Transcripts:
    """Per item: deltas in order, the final transcript, and which events came for it when."""

    order: list[tuple[str, str | None]] = field(default_factory=list)  # (type, item_id)
    deltas: dict[str, list[str]] = field(default_factory=dict)
    completed: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # when each event of ``order`` came
    started: float = field(default_factory=time.monotonic)

    def take(self, event: dict[str, Any]) -> None:
        kind, item = event["type"], event.get("item_id") or event.get("item", {}).get("id")
        self.order.append((kind, item))
        self.times.append(time.monotonic() - self.started)
        if kind == "conversation.item.input_audio_transcription.delta":
            self.deltas.setdefault(item, []).append(event["delta"])
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.completed[item] = event["transcript"]
        elif kind in ("error", "conversation.item.input_audio_transcription.failed"):
            self.errors.append(event)

    def items(self) -> list[str]:
        return [item for kind, item in self.order if kind == "input_audio_buffer.committed"]

    def deltas_before_stop(self, item: str) -> int:
        count = 0
        for kind, at in self.order:
            if at != item:
                continue
            if kind == "input_audio_buffer.speech_stopped":
                return count
            count += kind.endswith(".delta")
        return count

    def timeline(self) -> str:
        """Each event's second since the client began, type and item: for failure messages."""
        return "\n".join(
            f"{at:6.2f} {kind} {item or ''}"
            for at, (kind, item) in zip(self.times, self.order, strict=True)
        )
