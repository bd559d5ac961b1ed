"""Chunk planning: pure logic on sample indices, then on a real synthesized recording."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from serve_app.media import audio
from serve_app.model.chunking import (
    ChunkingOptions,
    SampleWindow,
    Window,
    group_into_units,
    merge_into_windows,
    plan,
)
from tests.support import speech

SR = 16000


def _s(seconds: float) -> int:
    return int(seconds * SR)


def test_close_speech_merges_up_to_the_window_length() -> None:
    speech_parts = [(_s(0), _s(10)), (_s(10.5), _s(20)), (_s(20.5), _s(29)), (_s(29.5), _s(40))]
    windows = merge_into_windows(speech_parts, SR, ChunkingOptions(max_window_s=30))
    assert windows == [SampleWindow(_s(0), _s(29)), SampleWindow(_s(29.5), _s(40))]


def test_a_long_silence_ends_a_window() -> None:
    windows = merge_into_windows([(0, _s(5)), (_s(9), _s(12))], SR, ChunkingOptions(max_gap_s=2))
    assert windows == [SampleWindow(0, _s(5)), SampleWindow(_s(9), _s(12))]


def test_speech_longer_than_a_window_is_split() -> None:
    windows = merge_into_windows([(0, _s(70))], SR, ChunkingOptions(max_window_s=30))
    assert len(windows) == 3
    assert all(w.end - w.start <= _s(30) for w in windows)
    assert windows[0].start == 0 and windows[-1].end == _s(70)


def test_units_are_balanced_ordered_and_cover_every_window() -> None:
    windows = [SampleWindow(_s(i * 25), _s(i * 25 + 20)) for i in range(20)]  # 500 s of audio
    units = group_into_units(windows, SR, ChunkingOptions(unit_s=150))
    assert len(units) == 4
    assert [w for u in units for w in u.windows] == windows
    lengths = [(u.end - u.start) / SR for u in units]
    assert max(lengths) - min(lengths) <= 25
    assert [u.index for u in units] == list(range(len(units)))


def test_short_audio_still_spreads_over_min_units() -> None:
    windows = [SampleWindow(_s(i * 20), _s(i * 20 + 15)) for i in range(4)]
    assert len(group_into_units(windows, SR, ChunkingOptions(unit_s=600, min_units=2))) == 2
    assert len(group_into_units(windows[:1], SR, ChunkingOptions(min_units=2))) == 1
    assert group_into_units([], SR, ChunkingOptions()) == []


def test_relative_windows_are_seconds_from_the_unit_start() -> None:
    (unit,) = group_into_units(
        [SampleWindow(_s(100), _s(110)), SampleWindow(_s(111), _s(120))],
        SR,
        ChunkingOptions(min_units=1),
    )
    assert unit.relative_windows(SR) == [Window(0.0, 10.0), Window(11.0, 20.0)]


@pytest.fixture(scope="module")
def long_audio(speech_dir: Path) -> np.ndarray:
    wav, _ = speech.long_recording("en_long", speech_dir)
    with open(wav, "rb") as f:
        return audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples


@pytest.mark.parametrize("min_silence_ms", [250, 500])
def test_real_recording_is_cut_only_in_silences(
    long_audio: np.ndarray, min_silence_ms: int
) -> None:
    options = ChunkingOptions(vad_min_silence_ms=min_silence_ms)
    units = plan(long_audio, SR, options)
    windows = [w for u in units for w in u.windows]
    assert len(units) >= 2
    assert all(w.end - w.start <= _s(options.max_window_s) for w in windows)
    assert all(a.end <= b.start for a, b in itertools.pairwise(windows))
    # Between consecutive windows there is only silence (espeak pads with digital silence).
    for a, b in itertools.pairwise(windows):
        assert np.abs(long_audio[a.end : b.start]).max(initial=0) < 0.02
    # And no speech is left out: whatever is loud lies inside some window.
    covered = np.zeros(len(long_audio), dtype=bool)
    for w in windows:
        covered[w.start : w.end] = True
    assert np.abs(long_audio[~covered]).max(initial=0) < 0.02


def test_cuts_in_short_pauses_fill_windows_up(long_audio: np.ndarray) -> None:
    """Each window costs an encoder pass however much speech it holds: cutting in pauses of
    250 ms as well as 500 ms lets a window end nearer its 30 s."""

    def windows(min_silence_ms: int) -> list[SampleWindow]:
        units = plan(long_audio, SR, ChunkingOptions(vad_min_silence_ms=min_silence_ms))
        return [w for u in units for w in u.windows]

    fine, coarse = windows(250), windows(500)
    assert len(fine) < len(coarse), (len(fine), len(coarse))
    mean = [np.mean([w.end - w.start for w in ws]) / SR for ws in (fine, coarse)]
    assert mean[0] > mean[1] and mean[0] > 25, mean
