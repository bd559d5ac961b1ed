"""Packing short windows into one decoding window: Whisper's encoder always runs on 30 s of
audio, so a 4 s clip decoded alone pays for 30. On a CPU the encoder is most of the cost (on
2 cores, `base`: 0.85 s of a 1 s window), and batching does not make it cheaper per window.
Windows laid end to end with a short silence between them, up to 30 s, cost one encoder pass.

Each window's words are then taken back by their timestamps: a word belongs to the window
whose stretch of the pack (widened by half the silence each side) holds its middle. The pack's
scores (log probability, no-speech) are its windows' scores. Plain logic over samples and
segments; ``serve_app.transcriber`` runs the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serve_app.schemas import Segment, Word
from serve_app.segments import shifted


@dataclass(frozen=True)
class Placed:
    """A window in its pack: which pack, and where in it (samples)."""

    pack: int
    start: int
    end: int


def plan_packs(lengths: Sequence[int], capacity: int, gap: int) -> list[Placed]:
    """Windows (by length, in order) placed in packs of at most ``capacity`` samples, ``gap``
    samples of silence apart; a window is never reordered or split."""
    placed: list[Placed] = []
    pack, used = -1, 0
    for length in lengths:
        start = used + gap
        if pack < 0 or start + length > capacity:
            pack, start = pack + 1, 0
        placed.append(Placed(pack, start, start + length))
        used = start + length
    return placed


def unpack(
    segments: Sequence[Segment], windows: Sequence[Placed], sample_rate: int, gap: int
) -> list[list[Segment]]:
    """One pack's segments (on the pack's clock, with words) handed back to its windows, each
    on its own clock. A pack of one window keeps its segments whole."""
    if len(windows) == 1:
        offset = windows[0].start / sample_rate
        return [[shifted(s, -offset) for s in segments]]
    bounds = [(w.start - gap / 2) / sample_rate for w in windows[1:]]
    found: list[list[tuple[Segment, list[Word]]]] = [[] for _ in windows]
    for segment in segments:
        parts: list[list[Word]] = [[] for _ in windows]
        for word in segment.words or []:
            middle = (word.start + word.end) / 2
            parts[sum(middle >= b for b in bounds)].append(word)
        for i, words in enumerate(parts):
            if words:
                found[i].append((segment, words))
    return [
        [_part(segment, words, w, sample_rate) for segment, words in pieces]
        for w, pieces in zip(windows, found, strict=True)
    ]


def _part(segment: Segment, words: list[Word], window: Placed, sample_rate: int) -> Segment:
    from faster_whisper.transcribe import get_compression_ratio

    text = "".join(w.word for w in words)
    part = segment.model_copy(
        update={
            "start": words[0].start,
            "end": words[-1].end,
            "text": text,
            # A part's tokens are not known apart from the pack's: parts carry none.
            "tokens": [],
            "words": words,
            "seek": 0,
            "compression_ratio": get_compression_ratio(text),
        }
    )
    # The last word's end often runs on into the silence after it: not past its window.
    offset = window.start / sample_rate
    return shifted(part, -offset, (window.end - window.start) / sample_rate)
