"""What one CPU model replica can take, to set the pools' autoscaling targets from: short clips
over HTTP at 1, 2, 4 and 8 requests in flight (throughput and latency), plain faster-whisper on the
same clips in the same run for comparison, and how long one work unit of a long file takes
(graceful_shutdown_timeout_s must be above it).

    .venv/bin/python -m bench.replica_throughput [--model base] [--clips 16]

The CPU pool is held at one replica; nothing else runs beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import duration, plain_sequential, short_clips
from tests.support import speech
from tests.support.serve_process import serve_run

# max_ongoing_requests at the most in flight below, so the replica holds them all.
ONE_REPLICA = {
    "TranscriberCPU": {
        "max_ongoing_requests": 8,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
    }
}


def _post(client: httpx.Client, clip: Path) -> float:
    started = time.perf_counter()
    with open(clip, "rb") as f:
        response = client.post("/v1/audio/transcriptions", files={"file": (clip.name, f)})
    response.raise_for_status()
    return time.perf_counter() - started


def _burst(client: httpx.Client, clips: list[Path], in_flight: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        latencies = list(pool.map(lambda clip: _post(client, clip), clips))
    return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="base")
    parser.add_argument("--clips", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = [path for path, _ in short_clips(work, args.clips)]
        audio_s = sum(duration(c) for c in clips)
        wav, _ = speech.long_recording("en_long", work)
        long_clip = speech.encode(wav, ".opus", work)
        long_s = duration(long_clip)
        env = {"WHISPER_MODEL": args.model, "MODELS_DIR": str(work / "models")}
        plain = plain_sequential(args.model, work / "models")
        plain(clips[0])  # warm-up
        started = time.perf_counter()
        for clip in clips:
            plain(clip)
        plain_s = time.perf_counter() - started
        rows = []
        with (
            serve_run(work, env, deployments=ONE_REPLICA) as (url, _, _),
            httpx.Client(base_url=url, timeout=600) as client,
        ):
            _post(client, clips[0])  # warm-up
            for in_flight in (1, 2, 4, 8):
                wall, latencies = _burst(client, clips, in_flight)
                rows.append((in_flight, wall, statistics.median(latencies), max(latencies)))
            unit_started = time.perf_counter()
            _post(client, long_clip)  # the default 240 s units, one replica: one after another
            long_wall = time.perf_counter() - unit_started

    print(
        f"machine: {os.cpu_count()} cores; model {args.model} int8 on CPU; one replica; "
        f"{len(clips)} clips, {audio_s:.0f} s of audio"
    )
    print(f"plain faster-whisper, sequential: {audio_s / plain_s:.2f} audio s per s")
    print("in flight  audio s/s  vs plain  median latency  max latency")
    for in_flight, wall, median, worst in rows:
        print(
            f"{in_flight:>9}  {audio_s / wall:>9.2f}  {plain_s / wall:>7.2f}x  "
            f"{median:>13.2f}s  {worst:>10.2f}s"
        )
    units = max(round(long_s / 240), 2)
    print(
        f"long file {long_s:.0f} s over HTTP: {long_wall:.1f} s, {long_s / long_wall:.1f} audio s "
        f"per s; about {long_wall / units:.1f} s per unit of {long_s / units:.0f} s"
    )


if __name__ == "__main__":
    main()
