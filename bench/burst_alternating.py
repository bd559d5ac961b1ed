"""The burst of short clips, the service against a plain faster-whisper loop, in turns.

    .venv/bin/python -m bench.burst_alternating [--model base] [--clips 40] [--runs 3]
        [--env NAME=VALUE ...]

`bench.batching` runs the plain loop before Ray starts and each service once after it. On a
shared 2-core machine whose speed drifts by 2x within an hour (steal time), a ratio between
two runs minutes apart says as much about the drift as about the service. This one starts
the service as shipped (serve_config.yaml, no overrides) first, then alternates the plain loop
(WhisperModel.transcribe one clip after another: beam 5, VAD on, language en, in this process)
with the same 40 clips published at once over AMQP, and prints each pair's ratio and the
median: both sides share the machine with the idle service, and a pair is minutes apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.batching import mixed_clips
from bench.common import (
    alternating_args,
    deployment_overrides,
    duration,
    plain_sequential,
    publish_burst,
    service_env,
)
from bench.long_audio import URL
from tests.support import amqp, speech
from tests.support.serve_process import serve_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=40)
    args = alternating_args(parser, runs=3)
    plain_s: list[float] = []
    service_s: list[float] = []
    wers: dict[str, list[float]] = {"plain": [], "service": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio_dir = work / "audio"
        burst = mixed_clips(audio_dir, args.clips)
        lengths = [duration(path) for path, _ in burst]
        env = service_env(args.model, work, audio_dir, URL, args.env)
        sequential = plain_sequential(args.model, work / "models", language="en")
        sequential(burst[0][0])  # warm-up; the service warms up when it starts
        with serve_run(work, env, deployments=deployment_overrides(args.deployment)):
            collector = amqp.ResultCollector(URL)
            try:
                base = 7 * 10**9 + int(time.time()) % 10**6 * 1000
                for run in range(args.runs):
                    started = time.perf_counter()
                    texts = [sequential(path) for path, _ in burst]
                    plain_s.append(time.perf_counter() - started)
                    wers["plain"].append(_mean_wer(burst, texts))
                    took, results = publish_burst(
                        URL, collector, [p for p, _ in burst], base + run * args.clips
                    )
                    assert all(r["success"] for r in results), [
                        r for r in results if not r["success"]
                    ]
                    service_s.append(took)
                    wers["service"].append(_mean_wer(burst, [r["texto"] for r in results]))
            finally:
                collector.close()

    ratios = [p / s for p, s in zip(plain_s, service_s, strict=True)]
    changes = [*args.env, *args.deployment]
    print(f"machine: {os.cpu_count()} cores; model {args.model} int8 on CPU")
    print(
        f"burst: {len(burst)} clips, {min(lengths):.1f}-{max(lengths):.1f} s, "
        f"{sum(lengths):.0f} s in all; {args.runs} alternating runs; serve_config.yaml"
        + ("".join(f"; {item}" for item in changes) if changes else " as shipped")
    )
    print(f"{'run':8s} {'plain loop s':>12s} {'service s':>10s} {'ratio':>7s}")
    for run, (p, s, r) in enumerate(zip(plain_s, service_s, ratios, strict=True), 1):
        print(f"{run:<8d} {p:12.1f} {s:10.1f} {r:6.2f}x")
    print(
        f"{'median':8s} {statistics.median(plain_s):12.1f} {statistics.median(service_s):10.1f} "
        f"{statistics.median(ratios):6.2f}x (>= 2.5x)"
    )
    print(
        f"mean WER: plain {statistics.mean(wers['plain']):.3f}, "
        f"service {statistics.mean(wers['service']):.3f}"
    )


def _mean_wer(burst: list[tuple[Path, str]], texts: list[str]) -> float:
    return statistics.mean(
        speech.word_error_rate(reference, text)
        for (_, reference), text in zip(burst, texts, strict=True)
    )


if __name__ == "__main__":
    main()
