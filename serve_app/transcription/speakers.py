"""Who said each word: a transcript merged with the speaker turns of diarization, by time.

Each word goes to the speaker whose turn overlaps it most (the nearest turn, within
``NEAREST_S``, when none overlaps: a word may fall in a gap between turns). A segment whose
words change speaker is cut where they do, so a subtitle cue never holds two voices; a segment
without words goes to the speaker overlapping it most. Speakers are named A, B, C... in the
order they first speak, as OpenAI's diarized_json names them; a speaker matched to a known
speaker's reference clip (``match_voices``) is named as the client named that clip. Plain logic.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from string import ascii_uppercase

from serve_app.schemas import Segment, Transcript, Word

NEAREST_S = 1.0


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: str  # the diarizer's own label
    name: str | None = None  # a known speaker's name, when a reference clip matched the voice


def match_voices(
    speakers: Mapping[str, Sequence[float]],
    known: Mapping[str, Sequence[float]],
    min_similarity: float,
) -> dict[str, str]:
    """Each known speaker (name: voice embedding) matched to at most one found speaker (label:
    centroid) and each found speaker to at most one name: the most similar pairs first (cosine
    similarity), none below ``min_similarity``. Returns label -> name."""
    pairs = sorted(
        (
            (_cosine(centroid, voice), label, name)
            for label, centroid in speakers.items()
            for name, voice in known.items()
        ),
        reverse=True,
    )
    named: dict[str, str] = {}
    for similarity, label, name in pairs:
        if similarity < min_similarity:
            break
        if label not in named and name not in named.values():
            named[label] = name
    return named


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def assign_speakers(transcript: Transcript, turns: list[Turn]) -> Transcript:
    """Linear in words and turns (2 h of audio: well under a second); blocking, so async
    callers run it in a thread."""
    ends = [s.end for s in transcript.segments] + [w.end for w in transcript.words]
    index = _TurnIndex(turns, max([transcript.duration, *ends]))
    pieces: list[Segment] = []
    for segment in transcript.segments:
        if not segment.words:
            pieces.append(segment.model_copy(update={"speaker": index.speaker(segment)}))
            continue
        words = [w.model_copy(update={"speaker": index.speaker(w)}) for w in segment.words]
        runs = [list(run) for _, run in groupby(words, key=lambda w: w.speaker)]
        if len(runs) == 1:
            pieces.append(segment.model_copy(update={"words": words, "speaker": words[0].speaker}))
            continue
        for i, run in enumerate(runs):
            pieces.append(
                segment.model_copy(
                    update={
                        "start": segment.start if i == 0 else run[0].start,
                        "end": segment.end if i == len(runs) - 1 else run[-1].end,
                        "text": "".join(w.word for w in run),
                        "tokens": [],  # the segment's tokens are not split with its words
                        "words": run,
                        "speaker": run[0].speaker,
                    }
                )
            )
    names = _names(pieces, {t.speaker: t.name for t in turns if t.name})
    renamed = [
        piece.model_copy(
            update={
                "id": i,
                "speaker": names.get(piece.speaker or ""),
                "words": None
                if piece.words is None
                else [
                    w.model_copy(update={"speaker": names.get(w.speaker or "")})
                    for w in piece.words
                ],
            }
        )
        for i, piece in enumerate(pieces)
    ]
    return transcript.model_copy(update={"segments": renamed})


def speaker_count(transcript: Transcript) -> int:
    return len({s.speaker for s in transcript.segments if s.speaker})


class _TurnIndex:
    """Turns by the seconds they cover, so that a word looks only at the few turns near it
    instead of all of them (a quadratic merge took 5.5 s for 2 h of audio)."""

    def __init__(self, turns: list[Turn], until: float) -> None:
        # Seconds outside what the transcript spans (and NEAREST_S around it) are never asked
        # about: a turn is filed under the seconds it covers inside that window only.
        self._first = -math.ceil(NEAREST_S) - 1
        self._last = math.floor(until) + math.ceil(NEAREST_S) + 1 if math.isfinite(until) else 0
        self._order = sorted(turns, key=lambda t: t.start)
        self._buckets: dict[int, list[int]] = defaultdict(list)
        for i, turn in enumerate(self._order):
            if not (math.isfinite(turn.start) and math.isfinite(turn.end)):
                continue  # no place in time: it overlaps nothing and is near nothing
            for second in self._seconds(turn.start, turn.end):
                self._buckets[second].append(i)

    def speaker(self, span: Segment | Word) -> str | None:
        """The turn overlapping ``span`` most (the earliest on a tie), else the nearest turn
        within NEAREST_S of its middle."""
        best, overlap = None, 0.0
        for i in self._near(span.start, span.end):
            turn = self._order[i]
            shared = min(turn.end, span.end) - max(turn.start, span.start)
            if shared > overlap:
                best, overlap = turn.speaker, shared
        if best is not None:
            return best
        middle = (span.start + span.end) / 2
        close = [
            (min(abs(turn.start - middle), abs(turn.end - middle)), turn.speaker)
            for turn in (self._order[i] for i in self._near(middle - NEAREST_S, middle + NEAREST_S))
        ]
        close = [c for c in close if c[0] <= NEAREST_S]
        return min(close)[1] if close else None

    def _near(self, start: float, end: float) -> list[int]:
        """Indexes, in start order, of the turns that cover some second of [start, end]."""
        if not (math.isfinite(start) and math.isfinite(end)):
            return []
        found: set[int] = set()
        for second in self._seconds(start, end):
            found.update(self._buckets.get(second, ()))
        return sorted(found)

    def _seconds(self, start: float, end: float) -> range:
        return range(max(math.floor(start), self._first), min(math.floor(end), self._last) + 1)


def _names(pieces: list[Segment], known: Mapping[str, str]) -> dict[str, str]:
    """Labels to names: known speakers by their names, the others A, B, C... in the order
    they first speak."""
    names: dict[str, str] = {}
    unknown = 0
    for piece in pieces:
        label = piece.speaker
        if label is None or label in names:
            continue
        if label in known:
            names[label] = known[label]
            continue
        names[label] = ascii_uppercase[unknown] if unknown < 26 else f"S{unknown + 1}"
        unknown += 1
    return names
