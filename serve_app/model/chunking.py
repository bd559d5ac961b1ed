"""Planning long audio: speech found by VAD, cut only in silences, into decoding windows of at
most ``max_window_s`` (the batch items inside a replica) grouped into work units of about
``unit_s`` (what fans out across replicas). Plain logic over sample indices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from serve_app.schemas import ServerVad

T = TypeVar("T")


@dataclass(frozen=True)
class ChunkingOptions:
    max_window_s: float = 30.0
    # A silence longer than this ends a window even when the window has room left, so windows
    # do not carry long silences (where Whisper tends to invent text).
    max_gap_s: float = 2.0
    # About eight 30 s windows: one full batch at the default batch size.
    unit_s: float = 240.0
    # Even a file shorter than unit_s is split this many ways (when it has that many windows),
    # so that it spreads over replicas.
    min_units: int = 2
    min_fanout_s: float = 60.0
    # Windows are cut only in silences at least this long (see Settings.chunk_min_silence_ms).
    vad_min_silence_ms: int = 250
    vad_speech_pad_ms: int = 400
    vad_threshold: float = 0.5

    def with_vad(self, vad: ServerVad | None) -> ChunkingOptions:
        """These options with what a request's chunking_strategy sets (server_vad)."""
        if vad is None:
            return self
        return replace(
            self,
            vad_threshold=_given(vad.threshold, self.vad_threshold),
            vad_speech_pad_ms=_given(vad.prefix_padding_ms, self.vad_speech_pad_ms),
            vad_min_silence_ms=_given(vad.silence_duration_ms, self.vad_min_silence_ms),
        )


def _given(value: T | None, default: T) -> T:
    return default if value is None else value


@dataclass(frozen=True)
class SampleWindow:
    """A decoding window as planned: sample indices in the file."""

    start: int
    end: int


@dataclass(frozen=True)
class Window:
    """A decoding window in seconds on its audio's clock: what crosses the model boundary (a
    short file's windows, a unit's windows from the unit's start) and what a replica decodes."""

    start: float
    end: float


@dataclass(frozen=True)
class WorkUnit:
    index: int
    start: int
    end: int
    windows: tuple[SampleWindow, ...]

    def relative_windows(self, sample_rate: int) -> list[Window]:
        """The unit's windows in seconds from its start, as its replica decodes them."""
        return [
            Window((w.start - self.start) / sample_rate, (w.end - self.start) / sample_rate)
            for w in self.windows
        ]


def merge_into_windows(
    speech: Sequence[tuple[int, int]], sample_rate: int, options: ChunkingOptions
) -> list[SampleWindow]:
    max_len = int(options.max_window_s * sample_rate)
    max_gap = int(options.max_gap_s * sample_rate)
    windows: list[SampleWindow] = []
    for start, end in _split_long(speech, max_len):
        if windows:
            last = windows[-1]
            if end - last.start <= max_len and start - last.end <= max_gap:
                windows[-1] = SampleWindow(last.start, end)
                continue
        windows.append(SampleWindow(start, end))
    return windows


def _split_long(speech: Sequence[tuple[int, int]], max_len: int) -> list[tuple[int, int]]:
    # VAD already splits speech longer than max_speech_duration_s; this is the guarantee.
    pieces = []
    for start, end in speech:
        count = max(1, -(-(end - start) // max_len))
        step = (end - start) / count
        pieces += [(start + round(i * step), start + round((i + 1) * step)) for i in range(count)]
    return pieces


def group_into_units(
    windows: Sequence[SampleWindow], sample_rate: int, options: ChunkingOptions
) -> list[WorkUnit]:
    if not windows:
        return []
    span = windows[-1].end - windows[0].start
    count = max(-(-span // int(options.unit_s * sample_rate)), options.min_units)
    target = span / min(count, len(windows))  # balanced units, not full ones and a runt
    groups: list[list[SampleWindow]] = []
    for window in windows:
        if groups and window.end - groups[-1][0].start <= target * 1.15:
            groups[-1].append(window)
        else:
            groups.append([window])
    return [
        WorkUnit(index=i, start=g[0].start, end=g[-1].end, windows=tuple(g))
        for i, g in enumerate(groups)
    ]


def detect_speech(
    audio: npt.NDArray[np.float32], options: ChunkingOptions
) -> list[tuple[int, int]]:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    vad = VadOptions(
        threshold=options.vad_threshold,
        min_silence_duration_ms=options.vad_min_silence_ms,
        speech_pad_ms=options.vad_speech_pad_ms,
        max_speech_duration_s=options.max_window_s,
    )
    return [(s["start"], s["end"]) for s in get_speech_timestamps(audio, vad)]


def vad_parameters(service: dict[str, Any], vad: ServerVad | None) -> dict[str, Any]:
    """faster-whisper's VAD parameters for a file transcribed in one call: the service's, with
    what a request's chunking_strategy sets."""
    if vad is None:
        return service
    chosen = {
        "threshold": vad.threshold,
        "speech_pad_ms": vad.prefix_padding_ms,
        "min_silence_duration_ms": vad.silence_duration_ms,
    }
    return {**service, **{k: v for k, v in chosen.items() if v is not None}}


def plan(
    audio: npt.NDArray[np.float32], sample_rate: int, options: ChunkingOptions
) -> list[WorkUnit]:
    """Work units covering every stretch of speech in ``audio``, in order."""
    windows = merge_into_windows(detect_speech(audio, options), sample_rate, options)
    return group_into_units(windows, sample_rate, options)
