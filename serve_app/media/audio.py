"""Audio in: extension, size and duration checks, then decoding to 16 kHz mono float32.

Decoding runs in a sandboxed FFmpeg child process (``decoder``) that reads the open file, so a
path or URL from outside never reaches FFmpeg's protocol handlers or demuxer probing.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from serve_app import metrics
from serve_app.errors import (
    AudioTooLargeError,
    EmptyAudioError,
    UndecodableAudioError,
    UnsupportedFormatError,
)
from serve_app.media import decoder

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

AudioArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int
    max_duration_s: float
    sample_rate: int = SAMPLE_RATE
    sandbox: decoder.Sandbox = field(default_factory=decoder.Sandbox)


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
    try:
        with _open_file(source) as fd:
            pcm = decoder.decode_pcm(fd, limits.sample_rate, limits.max_duration_s, limits.sandbox)
    except (UndecodableAudioError, UnsupportedFormatError):
        metrics.inc("whisper_decode_failures_total", stage="audio")
        raise
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    return DecodedAudio(samples=samples, sample_rate=limits.sample_rate)


@contextlib.contextmanager
def _open_file(source: BinaryIO) -> Iterator[int]:
    """A descriptor of a real file with the source's bytes: the decoder's stdin."""
    try:
        source.flush()
        fd = source.fileno()  # an upload spooled in memory is rolled over to disk here
    except (AttributeError, OSError, io.UnsupportedOperation):
        with tempfile.TemporaryFile() as copy:
            source.seek(0)
            shutil.copyfileobj(source, copy, length=1 << 20)
            copy.flush()
            yield copy.fileno()
        return
    yield fd
