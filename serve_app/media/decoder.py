"""Audio decoding in an FFmpeg child process, so a hostile file cannot take the replica with it.

What FFmpeg is allowed to do:
- read the already open file on its stdin (``file:/dev/stdin``), never a name from outside;
- use no protocol but ``file``, so nothing it parses can open a socket (SDP, RTP, HLS, HTTP);
- use only the audio demuxers in ``AUDIO_DEMUXERS``: content probing still tells an OGG from an
  MP3, but a probe that finds an ffconcat list, an SDP or HLS playlist or an image sequence is
  refused instead of followed to other files;
- map at most ``memory_bytes`` of address space and run for at most ``timeout_s`` of wall
  clock; its output is cut as soon as it passes the duration limit.
A crash, a hang or a limit hit ends that one decode with a clear error; the replica goes on.
"""

from __future__ import annotations

import math
import os
import re
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

from serve_app.errors import (
    AudioTooLongError,
    EmptyAudioError,
    UndecodableAudioError,
    UnsupportedFormatError,
)

# Demuxers of the containers in audio.SUPPORTED_EXTENSIONS: mov reads mp4/m4a, matroska reads
# webm, asf reads wma, mpeg reads MPEG program streams (.mpeg, .mpga).
AUDIO_DEMUXERS = ("mp3", "wav", "ogg", "flac", "mov", "matroska", "asf", "aac", "mpeg")
PRLIMIT = "prlimit"
# Container durations of VBR files without an index are estimates; only refuse up front when the
# declared length is clearly over, and let the sample count decide the rest.
DECLARED_DURATION_SLACK = 1.10
_READ_BYTES = 1 << 16
_STDERR_KEEP = 1 << 15
_DURATION = re.compile(rb"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
# A probe refused: the demuxer it found is not whitelisted, or FFmpeg 6.1+ will not detect an
# HLS playlist behind an audio file's extension ("Not detecting m3u8/hls with non standard ...").
# Matched on their level tags: a file's metadata is printed at [info], so it cannot pass for one.
_REFUSED = re.compile(rb"\[error\] (?:Format not on whitelist|Not detecting (\w+)/)")
# What the probe found: "Format concat probed with size=..." (FFmpeg 6.1+, at debug level), or
# the demuxer's name tagging the refusal, "[concat @ 0x...] [error] Format not on whitelist".
_PROBED = re.compile(
    rb"\[debug\] Format (\w+) probed with size"
    rb"|\[(\w+) @ [^\]]*\] \[error\] Format not on whitelist"
)
# A failure's line: what follows its level tag, after however many context tags ("[in#0 @ 0x..]
# [error] ...", "[aist#0:0/mp3 @ 0x..] [dec:mp3float @ 0x..] [error] ...", "[fatal] ...").
_FAILURE_LINE = re.compile(r"\[(?:error|fatal|panic)\] (.*)")
# The child gets none of the replica's environment (credentials in URLs). Two malloc arenas:
# FFmpeg 7+ runs demuxing, decoding, filtering and muxing in threads, and an arena per thread
# reserves 64 MB of address space, which made decodes fail at random under a 400 MB limit.
_CHILD_ENV = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C", "MALLOC_ARENA_MAX": "2"}
_LOADER_FAILED = re.compile(rb"error while loading shared libraries|Cannot allocate memory")


def bundled_ffmpeg() -> str:
    """The static FFmpeg build of the imageio-ffmpeg package (IMAGEIO_FFMPEG_EXE, or FFmpeg on
    PATH where the package has no build for this platform). Statically linked, it starts in
    30-40 ms for a 4 s MP3 on 2 cores, against 140-160 ms for Debian's, which loads 215 shared
    libraries first: most of what a lone short clip paid for decoding."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


@dataclass(frozen=True)
class Sandbox:
    """Which FFmpeg decodes, and the limits of its child process."""

    timeout_s: float = 120
    memory_bytes: int = 1 << 30
    ffmpeg: str = field(default_factory=bundled_ffmpeg)


class _TooLong(Exception):
    def __init__(self, seconds: float, at_least: bool) -> None:
        self.seconds, self.at_least = seconds, at_least


def command(sandbox: Sandbox, sample_rate: int, max_duration_s: float) -> list[str]:
    cpu_s = math.ceil(sandbox.timeout_s) + 1  # a backstop: the wall clock kills it first
    return [
        PRLIMIT,
        f"--as={sandbox.memory_bytes}",
        f"--cpu={cpu_s}",
        "--core=0",
        "--",
        sandbox.ffmpeg,
        "-nostdin",
        "-nostats",
        "-hide_banner",
        # Each line tagged with its level: the error lines give the reason of a failure.
        # Debug, for the line naming the demuxer a probe found (FFmpeg 6.1+ no longer names it
        # in the refusal); the input's declared duration is read from an info line.
        "-loglevel",
        "level+debug",
        "-threads",
        "1",
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        ",".join(AUDIO_DEMUXERS),
        "-i",
        "file:/dev/stdin",
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-t",
        f"{max_duration_s + 1:.3f}",
        "-f",
        "s16le",
        "-acodec",
        "pcm_s16le",
        "pipe:1",
    ]


def decode_pcm(fd: int, sample_rate: int, max_duration_s: float, sandbox: Sandbox) -> bytes:
    """16-bit mono PCM of the first audio stream of the open file ``fd``; domain errors only."""
    started = time.monotonic()
    proc = subprocess.Popen(
        command(sandbox, sample_rate, max_duration_s),
        stdin=fd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
        env=_CHILD_ENV,
    )
    max_bytes = int(max_duration_s * sample_rate) * 2
    try:
        pcm, stderr = _collect(proc, started + sandbox.timeout_s, max_bytes, max_duration_s)
        returncode = proc.wait(timeout=max(0.1, started + sandbox.timeout_s - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise _timed_out(sandbox) from None
    except _TooLong as exc:
        qualifier = "over " if exc.at_least else ""
        raise AudioTooLongError(
            f"Audio is {qualifier}{exc.seconds:.0f} s long; the limit is {max_duration_s:.0f} s"
        ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    # A file cut short still yields what decoded (FFmpeg exits 1), but a decoder killed by a
    # signal stopped at an arbitrary point: its audio is a silent truncation, not a result.
    if returncode != 0 and (not pcm or _killed(returncode)):
        raise _failure(returncode, stderr, sandbox)
    if len(pcm) < 2:
        raise EmptyAudioError("File contains no audio samples")
    return bytes(pcm[: len(pcm) - len(pcm) % 2])


def _collect(
    proc: subprocess.Popen[bytes], deadline: float, max_bytes: int, max_duration_s: float
) -> tuple[bytearray, bytes]:
    """Read stdout and stderr together until both close; raises at the deadline or the limit."""
    assert proc.stdout is not None and proc.stderr is not None
    pcm, stderr = bytearray(), bytearray()
    duration_checked = False
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "out")
        selector.register(proc.stderr, selectors.EVENT_READ, "err")
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, 0)
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, _READ_BYTES)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data == "out":
                    pcm += chunk
                    if len(pcm) > max_bytes:
                        raise _TooLong(max_duration_s, at_least=True)
                else:
                    stderr += chunk
                    del stderr[:-_STDERR_KEEP]
                    if not duration_checked and (found := _DURATION.search(stderr)):
                        duration_checked = True
                        declared = _seconds(found)
                        if declared > max_duration_s * DECLARED_DURATION_SLACK:
                            raise _TooLong(declared, at_least=False)
    return pcm, bytes(stderr)


def _seconds(found: re.Match[bytes]) -> float:
    hours, minutes, seconds = found.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _timed_out(sandbox: Sandbox) -> UndecodableAudioError:
    return UndecodableAudioError(
        f"Decoding the audio took longer than the {sandbox.timeout_s:.0f} s limit"
    )


def _failure(returncode: int, stderr: bytes, sandbox: Sandbox) -> Exception:
    if refused := _REFUSED.search(stderr):
        probed = _PROBED.search(stderr)
        found = refused.group(1) or (probed and (probed.group(1) or probed.group(2)))
        what = f" (it is '{found.decode()}')" if found else ""
        return UnsupportedFormatError(f"The file's content is not a supported audio format{what}")
    if not stderr and returncode < 0:
        # Killed before its first (debug) line: a static build that cannot map itself within
        # the address-space limit dies in exec, where a dynamic one says its libraries failed.
        return _over_memory()
    if _killed(returncode):
        name = signal.Signals(-returncode).name if returncode < 0 else "SIGKILL"
        if returncode == -signal.SIGXCPU:
            return _timed_out(sandbox)
        return UndecodableAudioError(f"The audio decoder crashed on this file ({name})")
    if _LOADER_FAILED.search(stderr):
        return _over_memory()
    return UndecodableAudioError(f"Cannot decode audio: {_reason(stderr)}")


def _killed(returncode: int) -> bool:
    # prlimit, which execs into FFmpeg, can also report a kill as 128 + SIGKILL.
    return returncode < 0 or returncode == 128 + signal.SIGKILL


def _over_memory() -> UndecodableAudioError:
    return UndecodableAudioError("Decoding the audio needs more memory than the limit allows")


def _reason(stderr: bytes) -> str:
    """FFmpeg's last error, without its internal addresses and the stdin file name."""
    failures = [
        found.group(1).strip()
        for line in stderr.decode(errors="replace").splitlines()
        if (found := _FAILURE_LINE.search(line))
    ]
    if not failures:
        return "no audio could be read"
    reason = failures[-1].replace("file:/dev/stdin: ", "")
    return reason[:200] or "no audio could be read"
