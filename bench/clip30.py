"""What a new user sees: time from `serve run` to the first transcript, and a 30 s clip through
the service against plain faster-whisper with the same model and decoding options, same machine.

    .venv/bin/python -m bench.clip30 [--runs 5] [--model base]

The service starts first (timed to its first transcript); then plain faster-whisper and the
service take turns on the same clip, never at the same time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.common import duration, plain_sequential
from tests.support import speech
from tests.support.serve_process import serve_run

CLIP = "en_thirty"


def _post(client: httpx.Client, clip: Path) -> httpx.Response:
    with open(clip, "rb") as f:
        return client.post("/v1/audio/transcriptions", files={"file": (clip.name, f)})


def _timed(fn: Callable[[], str]) -> tuple[float, str]:
    started = time.perf_counter()
    text = fn()
    return time.perf_counter() - started, text


def _service_text(client: httpx.Client, clip: Path) -> str:
    response = _post(client, clip)
    response.raise_for_status()
    text: str = response.json()["text"]
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default="base")
    args = parser.parse_args()
    plain_times: list[float] = []
    service_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = speech.encode(speech.synthesize(CLIP, work), ".mp3", work)
        seconds = duration(clip)
        reference = speech.reference(CLIP)
        env = {"WHISPER_MODEL": args.model, "MODELS_DIR": str(work / "models")}
        started = time.perf_counter()
        with (
            serve_run(work, env, wait_healthy_s=None) as (url, _, _),
            httpx.Client(base_url=url, timeout=300) as client,
        ):
            while True:  # a new user retrying until the first transcript comes back
                try:
                    if _post(client, clip).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            first_s = time.perf_counter() - started
            loading = time.perf_counter()
            plain = plain_sequential(args.model, work / "models")
            load_s = time.perf_counter() - loading
            plain(clip)  # warm-up, as the service's first request was
            # Alternate the two so that drift in the machine's speed hits both alike.
            for _ in range(args.runs):
                elapsed, plain_text = _timed(lambda: plain(clip))
                plain_times.append(elapsed)
                elapsed, service_text = _timed(lambda: _service_text(client, clip))
                service_times.append(elapsed)

    plain_s = statistics.median(plain_times)
    served = statistics.median(service_times)
    print(
        f"machine: {os.cpu_count()} cores; model {args.model} int8 on CPU; "
        f"clip {seconds:.1f} s mp3; {args.runs} alternating runs each"
    )
    print(
        f"plain faster-whisper: load {load_s:.1f} s; transcribe median {plain_s:.2f} s "
        f"(runs {', '.join(f'{t:.2f}' for t in plain_times)}); "
        f"WER {speech.word_error_rate(reference, plain_text):.3f}"
    )
    print(
        f"service: serve run -> first transcript {first_s:.1f} s; request median {served:.2f} s "
        f"(runs {', '.join(f'{t:.2f}' for t in service_times)}); "
        f"WER {speech.word_error_rate(reference, service_text):.3f}"
    )
    print(
        f"service / plain time: {served / plain_s:.2f}x  (plain {seconds / plain_s:.1f}x "
        f"real time, service {seconds / served:.1f}x)"
    )


if __name__ == "__main__":
    main()
