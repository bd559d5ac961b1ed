"""The per-window quality check of batched decoding: pure verdicts, and with the real model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from serve_app.media import audio
from serve_app.model import quality
from serve_app.model.chunking import Window, plan
from serve_app.model.quality import Thresholds, Verdict, guard, judge
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import Segment, TranscribeOptions
from serve_app.settings import Settings
from tests.support import speech

SR = 16000


def _segment(start: float, end: float, **quality: float) -> Segment:
    values = {"avg_logprob": -0.3, "compression_ratio": 1.5, "no_speech_prob": 0.05} | quality
    return Segment(
        id=0, seek=0, start=start, end=end, text=" x", tokens=[], temperature=0.0, **values
    )


def test_verdicts_follow_sequential_decodings_thresholds() -> None:
    limits = Thresholds()
    assert judge(_segment(0, 1), limits) is Verdict.OK
    assert judge(_segment(0, 1, compression_ratio=3.1), limits) is Verdict.REDO  # a loop
    assert judge(_segment(0, 1, avg_logprob=-1.4), limits) is Verdict.REDO  # a guess
    silence = _segment(0, 1, avg_logprob=-1.4, no_speech_prob=0.9)
    assert judge(silence, limits) is Verdict.SILENCE  # text invented over silence
    confident = _segment(0, 1, avg_logprob=-0.2, no_speech_prob=0.9)
    assert judge(confident, limits) is Verdict.OK  # sure of its words: speech after all
    dots = _segment(0, 1, avg_logprob=-0.2, no_speech_prob=0.9).model_copy(update={"text": " ."})
    assert judge(dots, limits) is Verdict.SILENCE  # no word at all


@pytest.fixture(scope="module")
def long_speech(speech_dir: Path) -> tuple[np.ndarray, list[Window], str]:
    clip, reference = speech.four_minutes(speech_dir)
    with open(clip, "rb") as f:
        samples = audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples[: SR * 90]
    windows = [
        Window(w.start / SR, w.end / SR)
        for unit in plan(samples, SR, Settings().chunking)
        for w in unit.windows
    ]
    return samples, windows, reference


def test_the_guard_keeps_what_passes_and_redoes_whole_windows() -> None:
    good, quiet = _segment(0, 2), _segment(2, 4, no_speech_prob=0.9, avg_logprob=-1.5)
    loop = _segment(10, 12, compression_ratio=3.0)
    redone = [_segment(10, 11), _segment(11, 12)]
    windows = [Window(0.0, 5.0), Window(10.0, 15.0)]
    asked: list[Window] = []

    def redo(window: Window) -> list[Segment]:
        asked.append(window)
        return redone

    kept = guard(windows, [[good, quiet], [_segment(13, 14), loop]], Thresholds(), redo)
    assert kept == [good, *redone]  # the silence dropped; the looping window replaced whole
    assert asked == [windows[1]]


def test_failing_windows_are_decoded_again_sequentially(
    tiny: Transcriber,
    long_speech: tuple[np.ndarray, list[Window], str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Made to fail: a check that calls every window a failure sends each back through
    sequential decoding, whose segments come back on the file's clock. (Raising the bar in
    ``Thresholds`` instead would fail every temperature of the redo too: six decodings.)"""
    samples, windows, _ = long_speech
    baseline = tiny.transcribe_windows(samples, windows, TranscribeOptions())
    monkeypatch.setattr(quality, "judge", lambda segment, limits: Verdict.REDO)
    with caplog.at_level(logging.INFO, logger="serve_app.model.quality"):
        redone = tiny.transcribe_windows(samples, windows, TranscribeOptions())
    again = [r for r in caplog.records if "failed the quality checks" in r.getMessage()]
    assert len(again) == len(windows) >= 3
    assert speech.word_error_rate(baseline.text, redone.text) < 0.15
    starts = [s.start for s in redone.segments]
    assert starts == sorted(starts) and redone.segments[-1].end <= len(samples) / SR + 0.5
    assert redone.segments[-1].start > windows[-1].start - 1  # not on the slice's clock


def test_text_over_silence_is_dropped(
    tiny: Transcriber, long_speech: tuple[np.ndarray, list[Window], str]
) -> None:
    samples, windows, _ = long_speech
    quiet = np.random.default_rng(7).normal(0, 1e-3, SR * 20).astype(np.float32)
    padded = np.concatenate([samples, quiet])
    end = len(samples) / SR
    silent = Window(end + 0.5, end + 19.5)
    result = tiny.transcribe_windows(padded, [*windows, silent], TranscribeOptions())
    assert result.segments and all(s.start < end for s in result.segments), [
        (s.start, s.text, s.no_speech_prob, s.avg_logprob)
        for s in result.segments
        if s.start >= end
    ]
