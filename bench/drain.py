"""Time to drain a mixed backlog, and the replica-seconds it took: the CPU pool fixed at one
replica, fixed at two, and scaled by the drain-time policy between one and two.

    .venv/bin/python -m bench.drain [--files 8] [--clips 32] [--deadline 30]

A simulated cluster on this machine (tests/support/ray_cluster.py: a head and two workers
offering `whisper_cpu`, raylets on loopback) runs `cluster/serve_cluster.yaml` as the drain
tests size it (tests/support/drain_deploy.py: one Ingest, requests in flight never ask for a
replica), tiny.en, one thread per replica (WHISPER_CPU_THREADS=1): a replica is one of the
machine's cores. Each run publishes the same backlog at once, 4-minute files and one-sentence
clips interleaved, as Whisper-Local requests. Drain: first publish to last result.
Replica-seconds: the pool's running replicas (sampled each second from /health) summed over
the drain; the policy's replicas kept after it are counted apart.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import duration, publish_burst, short_clips
from tests.support import amqp, speech
from tests.support.curve import Curve, Sample
from tests.support.drain_deploy import deploy, drain_config, rolled_out
from tests.support.ray_cluster import RayCluster, head_and_cpu_workers, service_env
from tests.support.serve_process import free_port

VHOST = "whisper_drain_bench"
URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
POOL = "TranscriberCPU"
RUNS = (("one fixed replica", 1, 1), ("two fixed replicas", 2, 2), ("policy, 1 to 2", 1, 2))


@dataclass(frozen=True)
class Drained:
    name: str
    drain_s: float
    replica_s: float
    peak: int
    kept_s: float  # replica-seconds above the minimum after the last result
    curve: str


def replica_seconds(samples: list[Sample], start: float, end: float) -> float:
    """The pool's running replicas summed over [start, end] (seconds on the curve's clock),
    each sample standing until the next."""
    total = 0.0
    for here, after in itertools.pairwise(samples):
        low, high = max(here.t, start), min(after.t, end)
        if high > low:
            total += here.pools.get(POOL, 0) * (high - low)
    return total


def run(
    cluster: RayCluster,
    port: int,
    name: str,
    bounds: tuple[int, int],
    deadline: int,
    jobs: list[Path],
    results: amqp.ResultCollector,
) -> Drained:
    url = f"http://127.0.0.1:{port}"
    low, high = bounds
    pool = {"min_replicas": low, "max_replicas": high, "downscale_delay_s": 30}
    config = drain_config(port, deadline, {POOL: pool}, env={"WHISPER_CPU_THREADS": "1"})
    deploy(cluster, config, f"bench_{low}_{high}")
    speech.wait_until(lambda: rolled_out(cluster, url, deadline, {POOL: low}), 600, name)
    curve = Curve(url, URL, VHOST)
    curve.first_sample()
    first = 5 * 10**8 + time.time_ns() % 10**7 * 100
    start = time.monotonic() - curve.started
    drain_s, answers = publish_burst(URL, results, jobs, first)
    end = start + drain_s
    assert all(a["success"] for a in answers), [a for a in answers if not a["success"]]
    speech.wait_until(
        lambda: (last := curve.now()) is not None and last.pools.get(POOL) == low, 300, "min"
    )
    samples = curve.stop()
    kept = replica_seconds(samples, end, samples[-1].t) - low * (samples[-1].t - end)
    return Drained(
        name,
        end - start,
        replica_seconds(samples, start, end),
        curve.peak(POOL),
        kept,
        curve.table(),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--deadline", type=int, default=30, help="SCALE_TARGET_DRAIN_SEC")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drain-bench-"))
    audio = work / "audio"
    audio.mkdir()
    long_file, _ = speech.four_minutes(audio)
    clips = [path for path, _ in short_clips(audio, args.clips)]
    # Interleaved: a file, then clips, so both kinds wait in the queue all along.
    per_file = max(len(clips) // max(args.files, 1), 1)
    jobs: list[Path] = []
    for i in range(args.files):
        jobs += [long_file, *clips[i * per_file : (i + 1) * per_file]]
    jobs += clips[args.files * per_file :]
    backlog_s = sum(duration(path) for path in jobs)
    print(f"backlog: {len(jobs)} jobs, {backlog_s:.0f} audio seconds, deadline {args.deadline} s")
    amqp.fresh_vhost(VHOST)
    env = service_env(work, audio, URL, AMQP_DEPTH_POLL_SEC="1", FANOUT_UNIT_SEC="60")
    drained = []
    with head_and_cpu_workers(work, env) as cluster:
        results = amqp.ResultCollector(URL)
        port = free_port()  # one for every run: Serve's proxy keeps the port it started on
        try:
            for name, low, high in RUNS:
                done = run(cluster, port, name, (low, high), args.deadline, jobs, results)
                print(f"\n{name}:\n{done.curve}", flush=True)
                drained.append(done)
        finally:
            results.close()
    base = drained[0]
    print("\n| run | drain (s) | audio s per s | replica-s | peak | kept after (replica-s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for d in drained:
        print(
            f"| {d.name} | {d.drain_s:.0f} ({base.drain_s / d.drain_s:.2f}x faster) | "
            f"{backlog_s / d.drain_s:.1f} | {d.replica_s:.0f} "
            f"({d.replica_s / base.replica_s:.2f}x) | {d.peak} | {d.kept_s:.0f} |"
        )


if __name__ == "__main__":
    main()
