"""Jobs per minute through AMQP against plain faster-whisper, same clips, same run.

    .venv/bin/python -m bench.amqp_jobs [--clips 20] [--model base]

20 short clips (one synthesized sentence each, 2-6 s) are transcribed by plain faster-whisper
one after another (the seeds' options: beam 5, VAD), then published at once to the service's
RabbitMQ queue; the service figure runs from the first publish to the last result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import plain_sequential, publish_burst, short_clips
from tests.support import amqp, speech
from tests.support.serve_process import serve_run

URL = "amqp://guest:guest@127.0.0.1:5672/"


def plain(model: str, clips: list[tuple[Path, str]], models_dir: Path) -> tuple[float, float]:
    transcribe = plain_sequential(model, models_dir)
    started = time.perf_counter()
    errors = [speech.word_error_rate(text, transcribe(path)) for path, text in clips]
    return time.perf_counter() - started, statistics.mean(errors)


def service(model: str, clips: list[tuple[Path, str]], work: Path) -> tuple[float, float]:
    env = {
        "WHISPER_MODEL": model,
        "MODELS_DIR": str(work / "models"),
        "DATA_DIR": str(work / "data"),
        "ALLOWED_AUDIO_ROOTS": str(clips[0][0].parent),
        "RABBITMQ_URL": URL,
    }
    with serve_run(work, env):
        collector = amqp.ResultCollector(URL)
        try:
            warm = 10**9 + int(time.time()) % 10**6 * 100
            amqp.publish(URL, {"attachment_id": warm, "audio_file_path": str(clips[0][0])})
            collector.wait(warm, timeout=300)
            elapsed, results = publish_burst(URL, collector, [p for p, _ in clips], warm + 1)
        finally:
            collector.close()
    assert all(r["success"] for r in results), [r for r in results if not r["success"]]
    wer = statistics.mean(
        speech.word_error_rate(t, r["texto"]) for (_, t), r in zip(clips, results, strict=True)
    )
    return elapsed, wer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--model", default="base")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = short_clips(work / "audio", args.clips)
        audio_s = sum(float(os.path.getsize(p)) for p, _ in clips)  # for the record only
        plain_s, plain_wer = plain(args.model, clips, work / "models")
        service_s, service_wer = service(args.model, clips, work)
    n = len(clips)
    print(
        f"machine: {os.cpu_count()} cores; model {args.model} int8 CPU; {n} clips "
        f"({audio_s / 1024:.0f} kB of mp3)"
    )
    print(
        f"plain faster-whisper, sequential: {plain_s:.1f} s = {n / plain_s * 60:.1f} jobs/min "
        f"(mean WER {plain_wer:.3f})"
    )
    print(
        f"service over AMQP, publish to last result: {service_s:.1f} s = "
        f"{n / service_s * 60:.1f} jobs/min (mean WER {service_wer:.3f})"
    )
    print(f"service / plain throughput: {plain_s / service_s:.2f}x")


if __name__ == "__main__":
    main()
