"""The long file, service against plain batched faster-whisper, alternating in one run.

    .venv/bin/python -m bench.long_alternating [--model base] [--runs 5] [--replicas 1]
        [--env NAME=VALUE ...]

`bench.long_audio` runs the plain baselines before Ray starts, then the service once each:
run-to-run noise on a 2-core machine (10% or more) is as large as the differences measured.
This one starts the service first, then alternates plain BatchedInferencePipeline (batch 8,
in this process) with the service over HTTP and over AMQP on the same 8-minute file, and
compares medians. Plain runs thus share the machine with an idle Ray, as the service does.
The service's first file, right after `serve run`, is timed too: the cold run (plain's first
run follows it, so plain is timed warm throughout).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import alternating_args, duration, plain_batched, service_env
from bench.long_audio import URL, _http
from tests.support import amqp, speech
from tests.support.serve_process import serve_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=1)
    args = alternating_args(parser, runs=5)
    times: dict[str, list[float]] = {"plain batched(8)": [], "service HTTP": [], "service AMQP": []}
    wers: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio_dir = work / "audio"
        wav, reference = speech.long_recording("en_long", audio_dir, voices=("en-us", "en-gb"))
        path = speech.encode(wav, ".mp3", audio_dir)
        seconds = duration(path)
        env = service_env(args.model, work, audio_dir, URL, args.env)
        fixed = {"TranscriberCPU": {"num_replicas": args.replicas, "autoscaling_config": None}}
        plain = plain_batched(args.model, work / "models")
        with (
            serve_run(work, env, deployments=fixed) as (url, _, _),
            httpx.Client(base_url=url, timeout=1800) as client,
        ):
            collector = amqp.ResultCollector(URL)
            try:
                started = time.perf_counter()
                text = _http(client, path)  # the first long file after start
                cold = time.perf_counter() - started
                cold_wer = speech.word_error_rate(reference, text)
                base = 3 * 10**9 + int(time.time()) % 10**6 * 100
                for run in range(args.runs):
                    started = time.perf_counter()
                    text = plain(path)
                    times["plain batched(8)"].append(time.perf_counter() - started)
                    wers["plain batched(8)"] = speech.word_error_rate(reference, text)
                    started = time.perf_counter()
                    text = _http(client, path)
                    times["service HTTP"].append(time.perf_counter() - started)
                    wers["service HTTP"] = speech.word_error_rate(reference, text)
                    started = time.perf_counter()
                    amqp.publish(URL, {"attachment_id": base + run, "audio_file_path": str(path)})
                    result = collector.wait(base + run, timeout=1800)
                    times["service AMQP"].append(time.perf_counter() - started)
                    wers["service AMQP"] = speech.word_error_rate(reference, result["texto"])
            finally:
                collector.close()

    plain_median = statistics.median(times["plain batched(8)"])
    print(f"machine: {os.cpu_count()} cores; model {args.model} int8 on CPU")
    print(
        f"long file: {seconds:.0f} s mp3; {args.runs} alternating runs; {args.replicas} replica(s)"
        + "".join(f"; {item}" for item in args.env)
    )
    header = f"{'run':20s} {'median s':>9s} {'audio s/wall s':>14s} {'vs batched':>10s}"
    print(f"{header} {'WER':>6s}  runs")
    for name, values in times.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(
            f"{name:20s} {median:9.1f} {seconds / median:14.2f} {plain_median / median:9.2f}x"
            f" {wers[name]:6.3f}  {runs}"
        )
    print(
        f"{'service HTTP cold':20s} {cold:9.1f} {seconds / cold:14.2f} {plain_median / cold:9.2f}x"
        f" {cold_wer:6.3f}  (the first file after start; target >= 0.9x)"
    )


if __name__ == "__main__":
    main()
