"""Sentence-sized segments from word timestamps.

faster-whisper's batched pipeline gives one segment per speech window (up to 30 s), which makes
30-second subtitle cues. Cut each segment where a sentence ends; a sentence still longer than
``max_s`` is cut again at its longest pause (preferring a pause after a comma). Plain logic;
faster-whisper's segments become ours here too (``from_faster_whisper``).
"""

from __future__ import annotations

from typing import Any

from serve_app.model.token_probs import Recorder
from serve_app.schemas import Segment, Word

# With the full-width and ideographic forms that CJK transcripts end sentences and clauses with.
SENTENCE_ENDS = (".", "?", "!", "\u2026", "\u3002", "\uff1f", "\uff01")
CLAUSE_ENDS = (",", ";", ":", "\uff0c", "\u3001")


def shifted(segment: Segment, offset: float, end: float = float("inf")) -> Segment:
    """A segment decoded from a slice, on the clock of the audio it was cut from (its times and
    its words' moved by ``offset`` seconds, ends capped at ``end``, none before 0: word times
    are on a 10 ms grid, and the first may land a few ms before its slice)."""

    def move(start: float, stop: float) -> dict[str, float]:
        return {
            "start": round(max(start + offset, 0.0), 3),
            "end": round(max(min(stop + offset, end), 0.0), 3),
        }

    words = (
        None
        if segment.words is None
        else [w.model_copy(update=move(w.start, w.end)) for w in segment.words]
    )
    return segment.model_copy(update={**move(segment.start, segment.end), "words": words})


def split_segments(segments: list[Segment], max_s: float, keep_words: bool) -> list[Segment]:
    """Every segment cut into sentences of at most ``max_s`` where its words allow, numbered
    from 0; ``keep_words`` False drops the word list afterwards (the caller did not ask)."""
    parts = [part for segment in segments for part in _split(segment, max_s)]
    return [
        part.model_copy(update={"id": i, "words": part.words if keep_words else None})
        for i, part in enumerate(parts)
    ]


def _split(segment: Segment, max_s: float) -> list[Segment]:
    words = segment.words
    if not words or len(words) < 2:
        return [segment]
    groups: list[list[Word]] = []
    for sentence in _sentences(words):
        groups.extend(_short_enough(sentence, max_s))
    if len(groups) == 1:
        return [segment]
    return [
        segment.model_copy(
            update={
                "start": group[0].start,
                "end": group[-1].end,
                "text": "".join(w.word for w in group),
                # The tokens of a part are not known apart from the whole: parts carry none.
                "tokens": [],
                "words": group,
            }
        )
        for group in groups
    ]


def _sentences(words: list[Word]) -> list[list[Word]]:
    sentences: list[list[Word]] = [[]]
    for word in words:
        sentences[-1].append(word)
        if word.word.strip().endswith(SENTENCE_ENDS):
            sentences.append([])
    return [s for s in sentences if s]


def _short_enough(words: list[Word], max_s: float) -> list[list[Word]]:
    if len(words) < 2 or words[-1].end - words[0].start <= max_s:
        return [words]

    # Cut before the word after the longest pause; a pause after a comma counts double.
    def pause(i: int) -> float:
        gap = words[i].start - words[i - 1].end
        return gap * 2 + 0.01 if words[i - 1].word.strip().endswith(CLAUSE_ENDS) else gap

    # Not at the very edges: a one-word part is no better than a long one.
    candidates = range(1, len(words)) if len(words) < 4 else range(2, len(words) - 1)
    cut = max(candidates, key=lambda i: (pause(i), -abs(i - len(words) / 2)))
    return _short_enough(words[:cut], max_s) + _short_enough(words[cut:], max_s)


def from_faster_whisper(index: int, segment: Any, recorder: Recorder | None = None) -> Segment:
    """A faster-whisper segment as ours: converted once, where it leaves the model; its words
    with their tokens' log probabilities when the decode recorded them."""
    logprobs = recorder.take(segment.words) if recorder else [None] * len(segment.words or [])
    return Segment(
        id=index,
        seek=segment.seek,
        start=round(segment.start, 3),
        end=round(segment.end, 3),
        text=segment.text,
        tokens=list(segment.tokens),
        temperature=segment.temperature,
        avg_logprob=segment.avg_logprob,
        compression_ratio=segment.compression_ratio,
        no_speech_prob=segment.no_speech_prob,
        words=None
        if segment.words is None
        else [
            Word(
                start=round(w.start, 3),
                end=round(w.end, 3),
                word=w.word,
                probability=w.probability,
                logprobs=tokens,
            )
            for w, tokens in zip(segment.words, logprobs, strict=True)
        ],
    )
