"""Synthesized speech for tests and benchmarks: espeak-ng speaks a reference text, ffmpeg encodes.

Reference texts live in tests/fixtures/<lang>_<name>.txt; the language prefix picks the voice.
"""

from __future__ import annotations

import re
import subprocess
import time
import wave
from collections.abc import Callable
from pathlib import Path

import jiwer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
VOICES = {"en": "en-us", "es": "es"}

# ffmpeg arguments per container, chosen to be what real producers send.
ENCODINGS: dict[str, list[str]] = {
    ".wav": ["-c:a", "pcm_s16le"],
    ".mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    ".ogg": ["-c:a", "libvorbis", "-q:a", "3"],
    ".opus": ["-c:a", "libopus", "-b:a", "24k"],
    ".m4a": ["-c:a", "aac", "-b:a", "64k"],
    ".flac": ["-c:a", "flac"],
    ".aac": ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
    ".wma": ["-c:a", "wmav2", "-b:a", "64k"],
    ".webm": ["-c:a", "libopus", "-b:a", "24k"],
    ".mp4": ["-c:a", "aac", "-b:a", "64k"],
}


def reference(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text().strip()


def synthesize(name: str, out_dir: Path, words_per_minute: int = 150) -> Path:
    """Speak fixtures/<name>.txt into <out_dir>/<name>.wav (espeak-ng's 22.05 kHz mono)."""
    wav = out_dir / f"{name}.wav"
    if not wav.exists():
        speak(reference(name), VOICES[name.split("_", 1)[0]], wav, words_per_minute)
    return wav


def paragraphs(name: str) -> list[str]:
    return [p.strip() for p in (FIXTURES / f"{name}.txt").read_text().split("\n\n") if p.strip()]


def long_recording(
    name: str, out_dir: Path, pause_s: float = 1.2, voices: tuple[str, ...] = ("en-us",)
) -> tuple[Path, str]:
    """Each paragraph of fixtures/<name>.txt spoken in turn with a pause between them, once
    per voice (several voices make a longer file that does not repeat one voice's errors).
    Returns the WAV and its reference text."""
    target = out_dir / f"{name}_{'_'.join(voices)}.wav"
    texts = paragraphs(name) * len(voices)
    if not target.exists():
        parts = []
        for i, text in enumerate(texts):
            voice = voices[i * len(voices) // len(texts)]
            parts.append(speak(text, voice, out_dir / f"{target.stem}_{i:03d}.wav"))
        with wave.open(str(parts[0])) as first:
            params = first.getparams()
        silence = b"\0" * int(params.framerate * pause_s) * params.sampwidth
        with wave.open(str(target), "wb") as out:
            out.setparams(params)
            for part in parts:
                with wave.open(str(part)) as w:
                    out.writeframes(w.readframes(w.getnframes()))
                out.writeframes(silence)
                part.unlink()
    return target, " ".join(texts)


def four_minutes(out_dir: Path) -> tuple[Path, str]:
    """The en_long recording (about 4 minutes) as Opus, small enough for the service's test
    MAX_FILE_SIZE_MB as a user would send it, and its reference text."""
    wav, reference = long_recording("en_long", out_dir)
    return encode(wav, ".opus", out_dir), reference


def speak(text: str, voice: str, wav: Path, words_per_minute: int = 150) -> Path:
    wav.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(wav), text],
        check=True,
    )
    return wav


def encode(source: Path, suffix: str, out_dir: Path, extra: list[str] | None = None) -> Path:
    """Re-encode ``source`` into the container named by ``suffix``."""
    target = out_dir / f"{source.stem}{suffix}"
    if not target.exists():
        ffmpeg(["-i", str(source), *ENCODINGS[suffix], *(extra or []), str(target)])
    return target


def tone(target: Path, seconds: int, codec_args: list[str]) -> Path:
    """A sine tone of the given length: long audio in a small file, for duration limits."""
    if not target.exists():
        ffmpeg(
            [
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency=300:duration={seconds}",
                "-ac",
                "1",
                *codec_args,
                str(target),
            ]
        )
    return target


def low_bitrate_opus(target: Path, seconds: int) -> Path:
    return tone(target, seconds, ["-c:a", "libopus", "-b:a", "6k"])


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


_normalize = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.SubstituteRegexes({r"[^\w\s']": " "}),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def word_error_rate(reference_text: str, hypothesis: str) -> float:
    return float(
        jiwer.wer(
            reference_text,
            hypothesis,
            reference_transform=_normalize,
            hypothesis_transform=_normalize,
        )
    )


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())
