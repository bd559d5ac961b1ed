"""The sandboxed decoder on hostile files and on real audio whose child is crashed, starved or
out of time. Real FFmpeg, real files; nothing is faked."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from serve_app.errors import AudioError, UndecodableAudioError, UnsupportedFormatError
from serve_app.media import audio, decoder
from serve_app.media.decoder import Sandbox
from tests.support import hostile, speech

LIMITS = audio.AudioLimits(max_bytes=10 * 1024 * 1024, max_duration_s=120)


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], hostile.Listener]:
    secret_dir = tmp_path_factory.mktemp("secret")
    secret = speech.synthesize("en_office", secret_dir)
    root = tmp_path_factory.mktemp("root")
    with hostile.tcp_listener() as listener:
        yield hostile.save_everywhere(root, secret, listener.port), listener


def test_hostile_containers_are_refused_quickly_without_reading_or_connecting(
    hostile_files: tuple[list[Path], hostile.Listener],
) -> None:
    paths, listener = hostile_files
    assert len(paths) == 7 * len(audio.SUPPORTED_EXTENSIONS)
    for path in paths:
        started = time.monotonic()
        with open(path, "rb") as f, pytest.raises(AudioError) as caught:
            audio.decode(f, LIMITS)
        elapsed = time.monotonic() - started
        assert elapsed < 2, (path.name, elapsed)
        # Either probing found the playlist or list and refused it by name, or the audio
        # demuxer the content resembled found no samples: never the secret's 12 s of speech.
        assert isinstance(caught.value, (UnsupportedFormatError, UndecodableAudioError)), path
        assert "secret" not in caught.value.message
    assert listener.connections == []


@pytest.mark.parametrize("name", ["ffconcat_symlinked_dir", "sdp", "hls_http", "image_png"])
def test_refusal_names_what_the_file_really_is(
    hostile_files: tuple[list[Path], hostile.Listener], name: str
) -> None:
    paths, _ = hostile_files
    path = next(p for p in paths if p.name == f"{name}.mp3")
    with open(path, "rb") as f, pytest.raises(UnsupportedFormatError, match="not a supported"):
        audio.decode(f, LIMITS)


def test_uploads_held_in_memory_decode_through_a_temporary_file(clip) -> None:
    data = clip("en_office", ".m4a").read_bytes()  # mov needs a seekable input
    decoded = audio.decode(io.BytesIO(data), LIMITS)
    assert 12.0 < decoded.duration < 13.5


def test_a_decode_past_its_wall_clock_limit_is_one_clear_error(speech_dir: Path) -> None:
    path = speech.tone(speech_dir / "tone_100.flac", 100, ["-ar", "48000", "-c:a", "flac"])
    limits = audio.AudioLimits(LIMITS.max_bytes, 120, sandbox=Sandbox(timeout_s=0.05))
    with open(path, "rb") as f, pytest.raises(UndecodableAudioError, match="longer than"):
        audio.decode(f, limits)


def test_a_decoder_over_its_memory_limit_is_one_clear_error(clip) -> None:
    limits = audio.AudioLimits(LIMITS.max_bytes, 120, sandbox=Sandbox(memory_bytes=64 << 20))
    with (
        open(clip("en_office", ".mp3"), "rb") as f,
        pytest.raises(UndecodableAudioError, match="memory"),
    ):
        audio.decode(f, limits)


def test_a_crashed_decoder_fails_its_file_and_the_process_goes_on(clip, speech_dir: Path) -> None:
    worker, outcome, child = _stopped_decoder(speech_dir)
    os.kill(child, signal.SIGSEGV)  # as a decoder bug would, once it runs
    os.kill(child, signal.SIGCONT)
    worker.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], UndecodableAudioError), outcome
    assert "crashed" in outcome[0].message
    with open(clip("en_office", ".ogg"), "rb") as f:  # the next file is not affected
        assert audio.decode(f, LIMITS).duration > 12


def test_audio_written_before_a_crash_is_not_a_result(clip, tmp_path: Path) -> None:
    """A decoder killed after it wrote its audio: what it wrote may be any prefix of the file,
    so the file fails (a file cut short, where FFmpeg exits 1, keeps what decoded)."""
    crashing = tmp_path / "ffmpeg"
    crashing.write_text(f'#!/bin/sh\n"{decoder.bundled_ffmpeg()}" "$@"\nkill -SEGV $$\n')
    crashing.chmod(0o755)
    limits = audio.AudioLimits(LIMITS.max_bytes, 120, sandbox=Sandbox(ffmpeg=str(crashing)))
    with open(clip("en_office", ".ogg"), "rb") as f, pytest.raises(UndecodableAudioError) as err:
        audio.decode(f, limits)
    assert "crashed" in err.value.message and "SIGSEGV" in err.value.message


def test_the_decoder_sees_none_of_the_replicas_environment(
    speech_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RABBITMQ_URL", "amqp://whisper:s3cret@broker:5672/")
    worker, outcome, child = _stopped_decoder(speech_dir)
    try:
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
    finally:
        os.kill(child, signal.SIGCONT)
        worker.join(timeout=30)
    assert not [v for v in environ if b"s3cret" in v], environ
    assert b"MALLOC_ARENA_MAX=2" in environ
    assert len(outcome) == 1 and outcome[0] == pytest.approx(110, abs=0.5), outcome


def _stopped_decoder(
    speech_dir: Path,
) -> tuple[threading.Thread, list[BaseException | float], int]:
    """A decode of a long file in a thread, and its FFmpeg child, stopped (SIGSTOP) once it
    runs; the outcome list gets the duration or the error when it is continued."""
    long_file = speech.tone(speech_dir / "tone_110.wav", 110, ["-ar", "48000"])
    outcome: list[BaseException | float] = []

    def decode_long() -> None:
        try:
            with open(long_file, "rb") as f:
                outcome.append(audio.decode(f, LIMITS).duration)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=decode_long)
    worker.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for pid in _ffmpeg_children():
            if _has_written(pid):
                os.kill(pid, signal.SIGSTOP)
                return worker, outcome, pid
    worker.join(timeout=30)
    raise AssertionError(f"the decoder child never showed up: {outcome}")


def _ffmpeg_children() -> list[int]:
    """Pids of FFmpeg processes this test process started (prlimit execs into FFmpeg)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        # The kernel keeps 15 characters of a command's name.
        if comm == Path(LIMITS.sandbox.ffmpeg).name[:15] and ppid == os.getpid():
            found.append(int(stat.parent.name))
    return found


def _has_written(pid: int) -> bool:
    """Whether the process has begun its work (its first log line): one killed before that
    reads as a decoder that could not start within its memory limit."""
    try:
        io_stats = Path(f"/proc/{pid}/io").read_text().split()
    except OSError:
        return False
    return int(io_stats[io_stats.index("wchar:") + 1]) > 0


def test_a_failure_names_ffmpegs_last_error_line_behind_any_context_tags() -> None:
    stderr = (
        b"[in#0/mp3 @ 0x55d25c33e800] [info] Stream #0:0: Audio: mp3\n"
        b"[aist#0:0/mp3 @ 0x55d25c33e800] [dec:mp3float @ 0x55d25c33c580] [error] "
        b"pthread_create() failed: Resource temporarily unavailable\n"
        b"[verbose] Exiting with exit code 245\n"
    )
    failure = decoder._failure(245, stderr, Sandbox(ffmpeg="ffmpeg"))
    assert isinstance(failure, UndecodableAudioError)
    assert failure.message == (
        "Cannot decode audio: pthread_create() failed: Resource temporarily unavailable"
    )
