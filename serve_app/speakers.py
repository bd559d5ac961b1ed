"""Who said each word: a transcript merged with the speaker turns of diarization, by time.

Each word goes to the speaker whose turn overlaps it most (the nearest turn, within
``NEAREST_S``, when none overlaps: a word may fall in a gap between turns). A segment whose
words change speaker is cut where they do, so a subtitle cue never holds two voices; a segment
without words goes to the speaker overlapping it most. Speakers are named A, B, C... in the
order they first speak, as OpenAI's diarized_json names them. Plain logic.
"""

from __future__ import annotations

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


def assign_speakers(transcript: Transcript, turns: list[Turn]) -> Transcript:
    ordered = sorted(turns, key=lambda t: t.start)
    pieces: list[Segment] = []
    for segment in transcript.segments:
        if not segment.words:
            pieces.append(segment.model_copy(update={"speaker": _speaker(ordered, segment)}))
            continue
        words = [w.model_copy(update={"speaker": _speaker(ordered, w)}) for w in segment.words]
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
    names = _names(pieces)
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


def _speaker(turns: list[Turn], span: Segment | Word) -> str | None:
    best, overlap = None, 0.0
    for turn in turns:
        shared = min(turn.end, span.end) - max(turn.start, span.start)
        if shared > overlap:
            best, overlap = turn.speaker, shared
    if best is not None:
        return best
    middle = (span.start + span.end) / 2
    near = [(min(abs(t.start - middle), abs(t.end - middle)), t.speaker) for t in turns]
    close = [n for n in near if n[0] <= NEAREST_S]
    return min(close)[1] if close else None


def _names(pieces: list[Segment]) -> dict[str, str]:
    names: dict[str, str] = {}
    for piece in pieces:
        if piece.speaker is not None and piece.speaker not in names:
            n = len(names)
            names[piece.speaker] = ascii_uppercase[n] if n < 26 else f"S{n + 1}"
    return names
