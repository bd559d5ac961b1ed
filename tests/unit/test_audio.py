"""Audio checks and decoding on real files made by espeak-ng and ffmpeg."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from serve_app.errors import (
    AudioTooLargeError,
    AudioTooLongError,
    EmptyAudioError,
    UndecodableAudioError,
    UnsupportedFormatError,
)
from serve_app.media import audio
from tests.support import speech

LIMITS = audio.AudioLimits(max_bytes=10 * 1024 * 1024, max_duration_s=60)


@pytest.mark.parametrize("suffix", sorted(speech.ENCODINGS))
def test_every_supported_container_decodes_to_16k_mono(clip, suffix: str) -> None:
    path = clip("en_office", suffix)
    with open(path, "rb") as f:
        decoded = audio.decode(f, LIMITS)
    assert decoded.sample_rate == 16000
    assert decoded.samples.dtype == np.float32
    assert decoded.samples.ndim == 1
    assert 12.0 < decoded.duration < 13.5  # espeak's clip is 12.7 s; encoders pad a little
    assert 0.05 < float(np.abs(decoded.samples).max()) <= 1.0


@pytest.mark.parametrize("name", ["talk.MP3", "a.b.opus", "x.webm", "voice.wma"])
def test_supported_extensions_pass(name: str) -> None:
    assert audio.check_extension(name) == Path(name).suffix.lower()


@pytest.mark.parametrize("name", ["notes.txt", "noext", None, "video.mkv", "a.mp3.exe"])
def test_unsupported_extensions_are_refused(name: str | None) -> None:
    with pytest.raises(UnsupportedFormatError, match="Unsupported audio extension"):
        audio.check_extension(name)


def test_size_checks() -> None:
    with pytest.raises(EmptyAudioError):
        audio.check_size(0, LIMITS)
    with pytest.raises(AudioTooLargeError, match=r"limit is 10\.0 MB"):
        audio.check_size(LIMITS.max_bytes + 1, LIMITS)
    audio.check_size(LIMITS.max_bytes, LIMITS)


def test_garbage_is_undecodable() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(UndecodableAudioError):
        audio.decode(io.BytesIO(rng.bytes(20_000)), LIMITS)


def test_text_renamed_to_mp3_is_undecodable() -> None:
    with pytest.raises(UndecodableAudioError):
        audio.decode(io.BytesIO(b"hello, this is not audio at all\n" * 100), LIMITS)


def test_truncated_file_keeps_what_decoded(clip) -> None:
    data = clip("en_office", ".mp3").read_bytes()
    decoded = audio.decode(io.BytesIO(data[: len(data) // 2]), LIMITS)
    assert 4.0 < decoded.duration < 8.0


def test_header_only_file_has_no_samples(clip) -> None:
    data = clip("en_office", ".wav").read_bytes()
    with pytest.raises((EmptyAudioError, UndecodableAudioError)):
        audio.decode(io.BytesIO(data[:44]), LIMITS)


def _long_tone(out: Path, seconds: int, suffix: str) -> Path:
    return speech.tone(
        out / f"tone_{seconds}{suffix}", seconds, ["-ar", "16000", *speech.ENCODINGS[suffix]]
    )


def test_declared_duration_over_limit_is_refused_before_decoding(speech_dir: Path) -> None:
    path = _long_tone(speech_dir, 600, ".opus")  # 10 min in a few hundred kB
    assert path.stat().st_size < LIMITS.max_bytes
    with open(path, "rb") as f, pytest.raises(AudioTooLongError, match="600 s long"):
        audio.decode(f, LIMITS)


def test_estimated_duration_from_a_stream_is_checked_up_front(speech_dir: Path) -> None:
    # Raw ADTS AAC in memory has no index; FFmpeg's bitrate estimate is enough to refuse it.
    path = _long_tone(speech_dir, 180, ".aac")
    with pytest.raises(AudioTooLongError, match="long; the limit is 60 s"):
        audio.decode(io.BytesIO(path.read_bytes()), LIMITS)


def test_decoding_stops_once_samples_pass_the_limit(speech_dir: Path) -> None:
    # 64 s declares within the estimate slack, so only the running sample count can catch it.
    path = _long_tone(speech_dir, 64, ".wav")
    with open(path, "rb") as f, pytest.raises(AudioTooLongError, match="over 60 s"):
        audio.decode(f, LIMITS)


def test_under_the_limit_passes(speech_dir: Path) -> None:
    path = _long_tone(speech_dir, 50, ".ogg")
    with open(path, "rb") as f:
        assert audio.decode(f, LIMITS).duration == pytest.approx(50, abs=0.2)


def test_protocol_strings_never_reach_ffmpeg() -> None:
    # decode() only takes file objects: a name like "concat:/etc/passwd" is data, not a URL.
    with pytest.raises(UndecodableAudioError):
        audio.decode(io.BytesIO(b"concat:/etc/passwd|/etc/hostname"), LIMITS)
