"""Transcription beside diarization: each cancels the other, bounded in length and time, the
merge linear and off the event loop, speaker bounds that could not hold said in the result.
Pure orchestration and merge logic, with stand-in calls."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from serve_app.errors import AudioTooLongError, InferenceError, ReplicaUnavailableError
from serve_app.schemas import Segment, TranscribeOptions, Transcript, Word
from serve_app.transcription import speakers
from serve_app.transcription.speakers import NEAREST_S, Turn, assign_speakers
from serve_app.transcription.with_speakers import (
    DiarizeLimits,
    bound_warnings,
    transcribe_with_speakers,
)

LIMITS = DiarizeLimits(max_audio_s=600, timeout_s=5)


def _word(start: float, end: float, text: str = " w") -> Word:
    return Word(start=start, end=end, word=text, probability=0.9)


def _transcript(words: list[Word], duration: float = 20) -> Transcript:
    segments = [
        Segment(
            id=i,
            seek=0,
            start=w.start,
            end=w.end,
            text=w.word,
            tokens=[],
            temperature=0,
            avg_logprob=0,
            compression_ratio=1,
            no_speech_prob=0,
            words=[w],
        )
        for i, w in enumerate(words)
    ]
    text = "".join(w.word for w in words)
    return Transcript(
        text=text,
        language="en",
        language_probability=1,
        duration=duration,
        segments=segments,
        model="m",
    )


class Call:
    """A stand-in remote call: answers after ``delay`` (or raises), noting a cancel."""

    def __init__(self, answer: object, delay: float = 0.0) -> None:
        self.answer, self.delay = answer, delay
        self.started = self.cancelled = False

    async def __call__(self, *_: object) -> object:
        self.started = True
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


TEXT = _transcript([_word(0.5, 1.0), _word(5.0, 5.5)])
TURNS = [Turn(0, 4, "S1"), Turn(4.5, 9, "S2")]


async def _run(
    transcribe: Call, diarize: Call, duration: float = 10, **options: object
) -> Transcript:
    return await transcribe_with_speakers(
        duration,
        TranscribeOptions(**options),
        transcribe,
        diarize,
        LIMITS,  # type: ignore[arg-type]
    )


async def test_a_failed_diarization_cancels_the_transcription_beside_it() -> None:
    transcribe = Call(TEXT, delay=30)
    diarize = Call(ReplicaUnavailableError("the Diarizer died"), delay=0.05)
    with pytest.raises(ReplicaUnavailableError, match="Diarizer died"):
        await asyncio.wait_for(_run(transcribe, diarize), 5)
    assert transcribe.cancelled


async def test_a_failed_transcription_cancels_the_diarization_beside_it() -> None:
    transcribe = Call(InferenceError("model failed"), delay=0.05)
    diarize = Call(TURNS, delay=30)
    with pytest.raises(InferenceError, match="model failed"):
        await asyncio.wait_for(_run(transcribe, diarize), 5)
    assert diarize.cancelled


async def test_a_diarization_past_its_timeout_fails_retryably_and_stops_both() -> None:
    transcribe, diarize = Call(TEXT, delay=30), Call(TURNS, delay=30)
    limits = DiarizeLimits(max_audio_s=600, timeout_s=0.1)
    with pytest.raises(InferenceError, match="longer than 0 s") as failed:
        await asyncio.wait_for(
            transcribe_with_speakers(10, TranscribeOptions(), transcribe, diarize, limits),  # type: ignore[arg-type]
            5,
        )
    assert failed.value.retryable and transcribe.cancelled and diarize.cancelled


async def test_audio_past_the_diarization_limit_is_refused_before_any_work() -> None:
    transcribe, diarize = Call(TEXT), Call(TURNS)
    with pytest.raises(AudioTooLongError, match="at most 600 s"):
        await _run(transcribe, diarize, duration=601)
    assert not transcribe.started and not diarize.started


async def test_the_merge_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    def merge(transcript: Transcript, turns: list[Turn]) -> Transcript:
        threads.append(threading.get_ident())
        return assign_speakers(transcript, turns)

    monkeypatch.setattr("serve_app.transcription.with_speakers.assign_speakers", merge)
    merged = await _run(Call(TEXT), Call(TURNS))
    assert [s.speaker for s in merged.segments] == ["A", "B"] and merged.warnings is None
    assert threads and threads[0] != threading.get_ident()
    assert all(s.words is None for s in merged.segments)  # words were not asked for


def test_speaker_bounds_that_could_not_hold_are_said() -> None:
    assert bound_warnings(TranscribeOptions(), 3000, 7) == []
    assert bound_warnings(TranscribeOptions(min_speakers=2, max_speakers=3), 60, 2) == []
    [long] = bound_warnings(TranscribeOptions(max_speakers=3), 3000, 3)
    assert "up to 20 minutes" in long
    assert bound_warnings(TranscribeOptions(max_speakers=3), 3000, 5)[1] == (
        "found 5 speakers, more than max_speakers=3"
    )
    assert bound_warnings(TranscribeOptions(min_speakers=3), 60, 2) == [
        "found 2 speakers, fewer than min_speakers=3"
    ]


class _Counted(Turn):
    """A turn that counts how often the merge reads its end."""

    reads = 0

    def __getattribute__(self, name: str) -> object:
        if name == "end":
            _Counted.reads += 1
        return super().__getattribute__(name)


def test_each_word_looks_only_at_the_turns_near_it() -> None:
    # Two hours: 2,400 turns of 3 s, 14,400 words. A merge that looks at every turn for every
    # word reads 35 million ends (5.5 s); one that looks near reads a few per word.
    turns = [_Counted(3.0 * i, 3.0 * i + 2.8, f"S{i % 4}") for i in range(2400)]
    words = [_word(0.5 * i, 0.5 * i + 0.3) for i in range(14400)]
    _Counted.reads = 0
    merged = assign_speakers(_transcript(words, 7200), turns)
    assert len(merged.segments) == len(words)
    assert _Counted.reads < 20 * len(words)


def _reference(turns: list[Turn], start: float, end: float) -> str | None:
    """The merge's rule, looking at every turn (the old quadratic code, as the oracle)."""
    best, overlap = None, 0.0
    for turn in sorted(turns, key=lambda t: t.start):
        shared = min(turn.end, end) - max(turn.start, start)
        if shared > overlap:
            best, overlap = turn.speaker, shared
    if best is not None:
        return best
    middle = (start + end) / 2
    near = [(min(abs(t.start - middle), abs(t.end - middle)), t.speaker) for t in turns]
    close = [n for n in near if n[0] <= NEAREST_S]
    return min(close)[1] if close else None


def test_the_near_turns_give_the_same_speakers_as_all_turns() -> None:
    rng = random.Random(35)
    for _ in range(30):
        turns = []
        for _ in range(rng.randint(0, 40)):
            start = rng.uniform(-1, 100)
            turns.append(Turn(start, start + rng.uniform(0, 12), f"S{rng.randint(0, 5)}"))
        words = sorted(
            (_word(s, s + rng.uniform(0, 1.5)) for s in (rng.uniform(0, 100) for _ in range(60))),
            key=lambda w: w.start,
        )
        index = speakers._TurnIndex(turns, until=102)
        assert [index.speaker(w) for w in words] == [
            _reference(turns, w.start, w.end) for w in words
        ]


def test_a_turn_without_end_costs_no_more_than_the_transcript() -> None:
    turns = [Turn(0, 1e12, "S1"), Turn(float("nan"), 3, "S2"), Turn(-1e12, 0.2, "S3")]
    merged = assign_speakers(_transcript([_word(0.5, 1.0), _word(5.0, 5.5)]), turns)
    assert [s.speaker for s in merged.segments] == ["A", "A"]
