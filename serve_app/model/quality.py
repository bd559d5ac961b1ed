"""A quality check per window of the batched pipeline, which has no temperature fallback and
ignores the thresholds sequential decoding applies: a window whose text looks like a
repetition loop or a low-confidence guess is decoded again the sequential way; text over what
the model itself calls silence is dropped, as sequential decoding drops it. Plain logic."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from serve_app.model.chunking import Window
from serve_app.schemas import Segment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    """faster-whisper's own defaults for sequential decoding."""

    compression_ratio: float = 2.4
    log_prob: float = -1.0
    no_speech: float = 0.6


class Verdict(Enum):
    OK = "ok"
    SILENCE = "silence"  # the model says no speech and is unsure of its words: drop them
    REDO = "redo"  # decode the window again, with the temperature fallback


def judge(segment: Segment, limits: Thresholds) -> Verdict:
    # No letter or digit at all (" ." over and over on near-silence): never speech, however
    # sure of it the model is.
    if not any(ch.isalnum() for ch in segment.text):
        return Verdict.SILENCE
    if segment.no_speech_prob > limits.no_speech and segment.avg_logprob < limits.log_prob:
        return Verdict.SILENCE
    if (
        segment.compression_ratio > limits.compression_ratio
        or segment.avg_logprob < limits.log_prob
    ):
        return Verdict.REDO
    return Verdict.OK


def guard(
    windows: Sequence[Window],
    per_window: Sequence[list[Segment]],
    limits: Thresholds,
    redo: Callable[[Window], list[Segment]],
) -> list[Segment]:
    """The windows' segments that pass, silence dropped; a window with any segment to redo is
    replaced whole by what ``redo`` decodes of it."""
    kept: list[Segment] = []
    for window, found in zip(windows, per_window, strict=True):
        verdicts = [judge(segment, limits) for segment in found]
        if Verdict.REDO not in verdicts:
            kept += [s for s, v in zip(found, verdicts, strict=True) if v is Verdict.OK]
            continue
        logger.info(
            "Window %.1f-%.1f s failed the quality checks; decoding it again",
            window.start,
            window.end,
        )
        kept += redo(window)
    return kept
