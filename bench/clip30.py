"""What a new user sees: time from `serve run` to the first transcript, and a 30 s clip through
the service against plain faster-whisper with the same model and decoding options, same machine.

    .venv/bin/python -m bench.clip30 [--runs 3] [--model base]

Plain faster-whisper runs first, alone; then the service starts and runs alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from serve_app.settings import Settings
from serve_app.weights import resolve_model_path
from tests.support import speech
from tests.support.serve_process import serve_run

CLIP = "en_thirty"


def _plain(model: str, clip: Path, runs: int, models_dir: Path) -> tuple[float, list[float], str]:
    from faster_whisper import WhisperModel

    settings = Settings()
    started = time.perf_counter()
    whisper = WhisperModel(resolve_model_path(model, models_dir), device="cpu", compute_type="int8")
    load_s = time.perf_counter() - started
    times, text = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        segments, _ = whisper.transcribe(
            str(clip),
            beam_size=settings.whisper_beam_size,
            vad_filter=True,
            vad_parameters={"min_silence_duration_ms": settings.whisper_vad_min_silence_ms},
        )
        text = "".join(s.text for s in segments).strip()
        times.append(time.perf_counter() - started)
    return load_s, times, text


def _post(client: httpx.Client, clip: Path) -> httpx.Response:
    with open(clip, "rb") as f:
        return client.post("/v1/audio/transcriptions", files={"file": (clip.name, f)})


def _service(model: str, clip: Path, runs: int, work: Path) -> tuple[float, list[float], str]:
    env = {"WHISPER_MODEL": model, "MODELS_DIR": str(work / "models")}
    started = time.perf_counter()
    with (
        serve_run(work, env, wait_healthy_s=None) as (url, _, _),
        httpx.Client(base_url=url, timeout=300) as client,
    ):
        while True:  # a new user retrying until the first transcript comes back
            try:
                response = _post(client, clip)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        first_s = time.perf_counter() - started
        times, text = [], ""
        for _ in range(runs):
            t0 = time.perf_counter()
            response = _post(client, clip)
            response.raise_for_status()
            times.append(time.perf_counter() - t0)
            text = response.json()["text"]
    return first_s, times, text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="base")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wav = speech.synthesize(CLIP, work)
        clip = speech.encode(wav, ".mp3", work)
        reference = speech.reference(CLIP)
        load_s, plain_times, plain_text = _plain(args.model, clip, args.runs, work / "models")
        first_s, service_times, service_text = _service(args.model, clip, args.runs, work)

    duration = 31.6
    plain = statistics.median(plain_times)
    served = statistics.median(service_times)
    print(f"machine: {os.cpu_count()} cores; model {args.model} int8 on CPU; clip {duration} s mp3")
    print(
        f"plain faster-whisper: load {load_s:.1f} s; transcribe median {plain:.2f} s "
        f"(runs {', '.join(f'{t:.2f}' for t in plain_times)}); "
        f"WER {speech.word_error_rate(reference, plain_text):.3f}"
    )
    print(
        f"service: serve run -> first transcript {first_s:.1f} s; request median {served:.2f} s "
        f"(runs {', '.join(f'{t:.2f}' for t in service_times)}); "
        f"WER {speech.word_error_rate(reference, service_text):.3f}"
    )
    print(
        f"service / plain time: {served / plain:.2f}x  (plain speed {duration / plain:.1f}x "
        f"real time, service {duration / served:.1f}x)"
    )


if __name__ == "__main__":
    main()
