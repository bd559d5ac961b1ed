"""Audio in: extension, size and duration checks, then decoding to 16 kHz mono float32.

Decoding reads from an open file object, never from a name handed to FFmpeg, so a path or URL
from outside cannot reach FFmpeg's protocol handlers (``concat:``, ``http://``, ``pipe:``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import BinaryIO

import av
import numpy as np
import numpy.typing as npt

from serve_app.errors import (
    AudioTooLargeError,
    AudioTooLongError,
    EmptyAudioError,
    UndecodableAudioError,
    UnsupportedFormatError,
)

SAMPLE_RATE = 16000
SUPPORTED_EXTENSIONS = frozenset(
    {
        ".opus",
        ".mp3",
        ".wav",
        ".m4a",
        ".ogg",
        ".flac",
        ".aac",
        ".wma",
        ".webm",
        ".mp4",
        ".mpga",
        ".mpeg",
    }
)
# Container durations of VBR files without an index are estimates; only reject up front when the
# declared length is clearly over, and let the decoder's sample count decide the rest.
_DECLARED_DURATION_SLACK = 1.10

AudioArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int
    max_duration_s: float
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class DecodedAudio:
    samples: AudioArray
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def check_extension(filename: str | None) -> str:
    suffix = PurePath(filename or "").suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        shown = suffix or "(none)"
        raise UnsupportedFormatError(
            f"Unsupported audio extension {shown}; supported: "
            + ", ".join(sorted(SUPPORTED_EXTENSIONS))
        )
    return suffix


def check_size(size: int, limits: AudioLimits) -> None:
    if size <= 0:
        raise EmptyAudioError("Audio file is empty")
    if size > limits.max_bytes:
        raise AudioTooLargeError(
            f"Audio file is {size / 1048576:.1f} MB; the limit is "
            f"{limits.max_bytes / 1048576:.1f} MB"
        )


def decode(source: BinaryIO, limits: AudioLimits) -> DecodedAudio:
    """Decode the first audio stream, stopping as soon as it runs past the duration limit."""
    max_samples = int(limits.max_duration_s * limits.sample_rate)
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise UndecodableAudioError(f"Cannot read audio: {_reason(exc)}") from exc
    with container:
        if not container.streams.audio:
            raise UndecodableAudioError("File has no audio stream")
        stream = container.streams.audio[0]
        declared = _declared_duration(container, stream)
        if declared is not None and declared > limits.max_duration_s * _DECLARED_DURATION_SLACK:
            raise _too_long(declared, limits)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=limits.sample_rate)
        chunks: list[npt.NDArray[np.int16]] = []
        total = 0
        for frame in _frames(container, stream):
            for out in resampler.resample(frame):
                chunk = np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1)
                total += len(chunk)
                if total > max_samples:
                    raise _too_long(total / limits.sample_rate, limits, at_least=True)
                chunks.append(chunk)
        for out in resampler.resample(None):
            chunks.append(np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1))
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise EmptyAudioError("File contains no audio samples")
    samples = np.concatenate(chunks).astype(np.float32) / 32768.0
    if len(samples) > max_samples:
        raise _too_long(len(samples) / limits.sample_rate, limits)
    return DecodedAudio(samples=samples, sample_rate=limits.sample_rate)


def _frames(
    container: av.container.InputContainer, stream: av.AudioStream
) -> Iterator[av.AudioFrame]:
    """Decoded frames, skipping corrupt packets; a file where nothing decodes is an error."""
    decoded_any = False
    last_error: Exception | None = None
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                last_error = exc
                continue
            for frame in frames:
                decoded_any = True
                yield frame
    except av.FFmpegError as exc:
        if not decoded_any:
            raise UndecodableAudioError(f"Cannot read audio: {_reason(exc)}") from exc
        return  # a truncated tail: keep what decoded
    if not decoded_any and last_error is not None:
        raise UndecodableAudioError(f"Cannot decode audio: {_reason(last_error)}") from last_error


def _declared_duration(
    container: av.container.InputContainer, stream: av.AudioStream
) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _too_long(seconds: float, limits: AudioLimits, at_least: bool = False) -> AudioTooLongError:
    qualifier = "over " if at_least else ""
    return AudioTooLongError(
        f"Audio is {qualifier}{seconds:.0f} s long; the limit is {limits.max_duration_s:.0f} s"
    )


def _reason(exc: Exception) -> str:
    # FFmpeg errors carry the (meaningless, file-object) name in str(); the reason is enough.
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
