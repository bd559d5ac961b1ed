"""Packing short windows into one decoding window: Whisper's encoder always runs on 30 s of
audio, so a 4 s clip decoded alone pays for 30. On a CPU the encoder is most of the cost (on
2 cores, `base`: 0.85 s of a 1 s window), and batching does not make it cheaper per window.
Windows laid end to end with a short silence between them, up to 30 s, cost one encoder pass.

Only one request's windows share a decoding window (``plan``): the decoder's context is the
whole window, so a neighbour's speech can change, replace or take words of yours (an audit found
reversed and foreign speech packed ahead of a clip replacing its text). A request's packs
depend on its own windows only, so its text is the same alone or beside any other request;
packs of different requests may still share a batch, side by side.

Each window's words are then taken back by their timestamps: a word belongs to the window
whose stretch of the pack (widened by half the silence each side) holds its middle. The pack's
scores (log probability, no-speech) are its windows' scores. Plain logic over samples and
segments; ``serve_app.model.transcriber`` runs the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.model.segments import shifted
from serve_app.schemas import Segment, Word


@dataclass(frozen=True)
class Placed:
    """A window in its pack: which pack, and where in it (samples)."""

    pack: int
    start: int
    end: int


def plan_packs(lengths: Sequence[int], capacity: int, gap: int) -> list[Placed]:
    """Windows (by length) placed in packs of at most ``capacity`` samples, ``gap`` samples of
    silence apart; a window is never split. Packs are filled first fit, longest window first:
    on the 40-clip burst (45 windows) 24 packs against 28 in arrival order, each pack an
    encoder pass and a decoding window saved. Inside a pack windows keep their order, and packs
    are numbered by their first window. One placement per window, in the given order."""
    bins: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, filled in enumerate(used):
            if filled + gap + lengths[i] <= capacity:
                bins[b].append(i)
                used[b] = filled + gap + lengths[i]
                break
        else:
            bins.append([i])
            used.append(lengths[i])
    placed: dict[int, Placed] = {}
    for pack, members in enumerate(sorted((sorted(b) for b in bins), key=lambda b: b[0])):
        start = 0
        for i in members:
            placed[i] = Placed(pack, start, start + lengths[i])
            start += lengths[i] + gap
    return [placed[i] for i in range(len(lengths))]


@dataclass(frozen=True)
class Plan:
    """One request's windows laid into its decoding windows (packs)."""

    placed: list[Placed]  # one per window, in order
    clips: list[np.ndarray[Any, Any]]  # one per pack: its windows with silence between them

    @property
    def members(self) -> list[list[int]]:
        """Each pack's windows (their indexes), in their order in the pack."""
        found: list[list[int]] = [[] for _ in self.clips]
        for i, window in enumerate(self.placed):
            found[window.pack].append(i)
        return found

    @property
    def shared(self) -> bool:
        """Whether any pack holds more than one window (its words must then be split)."""
        return len(self.clips) < len(self.placed)


def plan(slices: Sequence[np.ndarray[Any, Any]], capacity: int, gap: int, pack: bool) -> Plan:
    """One request's windows (samples) in packs; ``pack`` False: each window alone."""
    lengths = [len(s) for s in slices]
    if pack:
        placed = plan_packs(lengths, capacity, gap)
    else:
        placed = [Placed(i, 0, n) for i, n in enumerate(lengths)]
    ends = [0] * (1 + max((w.pack for w in placed), default=-1))
    for window in placed:
        ends[window.pack] = max(ends[window.pack], window.end)
    clips = [np.zeros(end, np.float32) for end in ends]
    for window, samples in zip(placed, slices, strict=True):
        clips[window.pack][window.start : window.end] = samples
    return Plan(placed, clips)


def settle(
    plan: Plan, decoded: Sequence[Sequence[Segment]], sample_rate: int, gap: int
) -> tuple[list[list[Segment]], list[int]]:
    """Each window's segments (on its own clock) from its pack's, and the windows to decode
    again alone: without timestamp tokens the model may end a pack at a pause, and the windows
    after it get no word, or a stray one (tiny.en stopped after a 2.5 s clip packed before a
    12.7 s one; base left one word of a 6 s clip)."""
    per_window: list[list[Segment]] = [[] for _ in plan.placed]
    members = plan.members
    for pack, found in zip(members, decoded, strict=True):
        taken = unpack(found, [plan.placed[i] for i in pack], sample_rate, gap)
        for i, segments in zip(pack, taken, strict=True):
            per_window[i] = segments
    lost = [
        i
        for i, (w, found) in enumerate(zip(plan.placed, per_window, strict=True))
        if len(members[w.pack]) > 1 and not covers(found, (w.end - w.start) / sample_rate)
    ]
    return per_window, lost


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


# VAD pads speech by 400 ms each side; a word a little further in is still at the window's end.
_END_SLACK_S = 2.0
_END_SLACK_SHARE = 0.25


def covers(segments: Sequence[Segment], length_s: float) -> bool:
    """Whether a packed window's words (on its clock) reach both of its ends: when the model
    ends a pack early or skips a window, the window gets none, or a stray word at one end."""
    words = [w for s in segments for w in s.words or []]
    if not words:
        return False
    slack = max(_END_SLACK_S, _END_SLACK_SHARE * length_s)
    return words[0].start <= slack and words[-1].end >= length_s - slack
