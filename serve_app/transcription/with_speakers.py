"""Transcription and diarization of one file side by side, bounded, each cancelling the other:
if either fails, the other's work stops (it would be thrown away), and the merge of the two runs
off the event loop. Plain asyncio; the callers hand in the two calls (Ray at the edge)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from serve_app.errors import AudioTooLongError, InferenceError
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.transcription.diarizer import SPECTRAL_UNTIL_S
from serve_app.transcription.speakers import Turn, assign_speakers, speaker_count

A = TypeVar("A")
B = TypeVar("B")


@dataclass(frozen=True)
class DiarizeLimits:
    max_audio_s: float  # DIARIZE_MAX_AUDIO_SEC: longer files are refused before any work
    timeout_s: float  # DIARIZE_TIMEOUT_SEC: one diarization call, queue wait included


async def transcribe_with_speakers(
    duration: float,
    options: TranscribeOptions,
    transcribe: Callable[[TranscribeOptions], Awaitable[Transcript]],
    diarize: Callable[[], Awaitable[list[Turn]]],
    limits: DiarizeLimits,
) -> Transcript:
    """The transcript (with words, to cut segments where the voice changes) merged with the
    speaker turns; ``warnings`` say when min/max_speakers could not be held to."""
    if duration > limits.max_audio_s:
        raise AudioTooLongError(
            f"Diarization takes at most {limits.max_audio_s:.0f} s of audio; this file is "
            f"{duration:.0f} s (transcribe it without diarize, or in parts)"
        )
    with_words = options.model_copy(update={"word_timestamps": True})
    transcript, turns = await both(transcribe(with_words), _timed(diarize(), limits.timeout_s))
    merged = await asyncio.to_thread(assign_speakers, transcript, turns)
    if not options.word_timestamps:
        merged = merged.model_copy(
            update={"segments": [s.model_copy(update={"words": None}) for s in merged.segments]}
        )
    if warnings := bound_warnings(options, duration, speaker_count(merged)):
        merged = merged.model_copy(update={"warnings": warnings})
    return merged


def bound_warnings(options: TranscribeOptions, duration: float, found: int) -> list[str]:
    """What the result says when the speaker bounds asked for were not what decided it."""
    low, high = options.min_speakers, options.max_speakers
    if low is None and high is None:
        return []
    said: list[str] = []
    if duration > SPECTRAL_UNTIL_S:
        said.append(
            f"min_speakers/max_speakers apply to files up to {SPECTRAL_UNTIL_S / 60:.0f} "
            "minutes; this file's speakers were counted by clustering alone"
        )
    if found and low is not None and found < low:
        said.append(f"found {found} speakers, fewer than min_speakers={low}")
    if high is not None and found > high:
        said.append(f"found {found} speakers, more than max_speakers={high}")
    return said


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results; the first failure cancels the other call and is raised as it is."""
    one, two = asyncio.ensure_future(first), asyncio.ensure_future(second)
    try:
        await asyncio.wait({one, two}, return_when=asyncio.FIRST_EXCEPTION)
        for task in (one, two):
            failure = task.exception() if task.done() and not task.cancelled() else None
            if failure is not None:
                raise failure
        return one.result(), two.result()
    finally:
        for task in (one, two):
            task.cancel()
        await asyncio.gather(one, two, return_exceptions=True)


async def _timed(call: Awaitable[list[Turn]], timeout_s: float) -> list[Turn]:
    try:
        return await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        raise InferenceError(
            f"Diarization took longer than {timeout_s:.0f} s (DIARIZE_TIMEOUT_SEC); "
            "the request may be retried"
        ) from None
