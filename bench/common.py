"""Shared by the benchmark scripts: plain faster-whisper baselines, clips, replica memory."""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from serve_app.model.weights import resolve_model_path
from serve_app.settings import Settings
from tests.support import amqp, speech


def plain_sequential(
    model: str, models_dir: Path, language: str | None = None
) -> Callable[[Path], str]:
    """faster-whisper the seeds' way: WhisperModel.transcribe, beam 5, VAD on (500 ms)."""
    from faster_whisper import WhisperModel

    settings = Settings()
    whisper = WhisperModel(resolve_model_path(model, models_dir), device="cpu", compute_type="int8")

    def transcribe(clip: Path) -> str:
        segments, _ = whisper.transcribe(
            str(clip),
            language=language,
            beam_size=settings.whisper_beam_size,
            vad_filter=True,
            vad_parameters={"min_silence_duration_ms": settings.whisper_vad_min_silence_ms},
        )
        return " ".join(s.text.strip() for s in segments)

    return transcribe


def plain_batched(model: str, models_dir: Path, batch_size: int = 8) -> Callable[[Path], str]:
    """faster-whisper's BatchedInferencePipeline with its defaults."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    whisper = WhisperModel(resolve_model_path(model, models_dir), device="cpu", compute_type="int8")
    pipeline = BatchedInferencePipeline(whisper)

    def transcribe(clip: Path) -> str:
        segments, _ = pipeline.transcribe(str(clip), batch_size=batch_size)
        return " ".join(s.text.strip() for s in segments)

    return transcribe


def sentences() -> list[str]:
    text = " ".join(speech.reference(n) for n in ("en_thirty", "en_office"))
    text += " " + " ".join(speech.paragraphs("en_long"))
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def short_clips(out: Path, count: int) -> list[tuple[Path, str]]:
    """One sentence each (2-10 s), at three speaking rates."""
    chosen = [s for s in sentences() if 6 <= len(s.split()) <= 24]
    clips = []
    for i in range(count):
        text = chosen[i % len(chosen)]
        wav = speech.speak(text, "en-us", out / f"clip{i:02d}.wav", 150 + 10 * (i % 3))
        clips.append((speech.encode(wav, ".mp3", out), text))
    return clips


def duration(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip())


def replica_peak_memory_mb(deployment: str = "TranscriberCPU") -> list[float]:
    """Peak resident memory (VmHWM) of each live replica process of a deployment."""
    pids = subprocess.run(
        ["pgrep", "-f", f"ServeReplica:whisper:{deployment}"], capture_output=True, text=True
    ).stdout.split()
    peaks = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match:
            peaks.append(int(match.group(1)) / 1024)
    return peaks


def publish_burst(
    url: str, collector: amqp.ResultCollector, clips: list[Path], first_id: int
) -> tuple[float, list[dict[str, Any]]]:
    """Whisper-Local requests for every clip published at once (language en); seconds from
    the first publish to the last result, and the results in clip order."""
    ids = list(range(first_id, first_id + len(clips)))
    started = time.perf_counter()
    amqp.publish(
        url,
        *(
            {"attachment_id": i, "audio_file_path": str(path), "language": "en"}
            for i, path in zip(ids, clips, strict=True)
        ),
    )
    results = [collector.wait(i, timeout=1800) for i in ids]
    return time.perf_counter() - started, results


def alternating_args(parser: argparse.ArgumentParser, runs: int) -> argparse.Namespace:
    """The options of the benchmarks that run the service and plain faster-whisper in turns."""
    parser.add_argument("--model", default="base")
    parser.add_argument("--runs", type=int, default=runs)
    service_options(parser)
    return parser.parse_args()


def service_options(parser: argparse.ArgumentParser) -> None:
    """--env and --deployment: what a benchmark changes in the service it starts."""
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the service's replicas"
    )
    parser.add_argument(
        "--deployment",
        action="append",
        default=[],
        help="DEPLOYMENT.OPTION=YAML over serve_config.yaml, e.g. "
        "TranscriberCPU.autoscaling_config.target_ongoing_requests=16",
    )


def deployment_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """--deployment DEPLOYMENT.OPTION[.OPTION...]=YAML items as serve_run's overrides."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        path, value = item.split("=", 1)
        name, *keys = path.split(".")
        target = overrides.setdefault(name, {})
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = yaml.safe_load(value)
    return overrides


def service_env(
    model: str, work: Path, audio_dir: Path, rabbitmq_url: str, extra: list[str]
) -> dict[str, str]:
    """The service's environment in a benchmark: its model, data and audio under ``work``,
    and the NAME=VALUE pairs given with --env."""
    return {
        "WHISPER_MODEL": model,
        "MODELS_DIR": str(work / "models"),
        "DATA_DIR": str(work / "data"),
        "ALLOWED_AUDIO_ROOTS": str(audio_dir),
        "RABBITMQ_URL": rabbitmq_url,
        **dict(item.split("=", 1) for item in extra),
    }
