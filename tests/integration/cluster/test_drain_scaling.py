"""The model pools scale on the backlog's audio seconds, by a drain deadline, on the simulated
cluster of this package: a head, two workers offering `whisper_cpu` and one offering
`whisper_gpu` (and no GPU: the GPU pool runs tiny.en on its CPU), raylets on loopback,
running `cluster/serve_cluster.yaml` with the GPU pool between 0 and 1 replica, the CPU pool
between 1 and 2 (0 and 2 in the first phase), and a request target so high that requests in
flight never ask for a replica: only the backlog's audio can.

- With the default deadline (SCALE_TARGET_DRAIN_SEC=600) and both pools at zero when idle,
  two 4-minute files wait for a replica (none fails) and wake the GPU pool first (the CPU
  pool is still at zero when it runs).
- With a 10 s deadline the same files scale the CPU pool to two as well (it takes what the
  GPU pool cannot drain by then), while as many short clips keep it at one.
- Once the queue drains both pools are back at their minimum, zero for the GPU pool. Every
  job has one result while replicas come and go.

Prints the curves (`-s`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import amqp, speech
from tests.support.curve import Curve, run_backlog
from tests.support.drain_deploy import deploy, drain_config, rolled_out
from tests.support.ray_cluster import RayCluster

VHOST = "whisper_drain_test"
URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
FILES = 6  # 4-minute files a phase: 24 minutes of audio
CPU_POOL = {
    "min_replicas": 1,
    "max_replicas": 2,
    # Longer than a clip's second counted as a typical (4-minute) job before it decodes,
    # averaged over the look-back.
    "upscale_delay_s": 8,
    "downscale_delay_s": 5,
}
GPU_POOL = {
    "min_replicas": 0,
    "max_replicas": 1,
    "upscale_delay_s": 5,
    "downscale_delay_s": 5,
    # The requests in flight, averaged over it, keep a replica (Serve's own rule) while any
    # were seen: the shipped 30 s would hold the GPU pool that long after the last job.
    "look_back_period_s": 5,
}
POOLS = {"TranscriberGPU": GPU_POOL, "TranscriberCPU": CPU_POOL}
# The first phase: every pool at zero when idle.
ASLEEP = {"TranscriberGPU": GPU_POOL, "TranscriberCPU": {**CPU_POOL, "min_replicas": 0}}


def _minimum(pools: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: autoscaling["min_replicas"] for name, autoscaling in pools.items()}


IDLE = _minimum(POOLS)


# Each replica's settings over the cluster's: this module's broker, and a 4-minute file
# fanned out in four parts.
ENV = {"RABBITMQ_URL": URL, "FANOUT_UNIT_SEC": "60"}


@pytest.fixture(scope="module")
def cluster(sim_cluster: RayCluster) -> RayCluster:
    amqp.fresh_vhost(VHOST)
    return sim_cluster


@pytest.fixture(scope="module")
def url(sim_port: int) -> str:
    """Where the service listens (Serve's proxy keeps the port it started on)."""
    return f"http://127.0.0.1:{sim_port}"


def _deploy(
    cluster: RayCluster, url: str, drain_s: int, pools: dict[str, dict[str, Any]] = POOLS
) -> None:
    port = int(url.rsplit(":", 1)[1])
    deploy(cluster, drain_config(port, drain_s, pools, ENV), f"serve_drain_{drain_s}")
    idle = _minimum(pools)
    speech.wait_until(
        lambda: rolled_out(cluster, url, drain_s, idle), 300, f"a {drain_s} s deadline"
    )


def _phase(
    url: str, audio: Path, jobs: int, results: amqp.ResultCollector, idle: bool = False
) -> Curve:
    """Publish ``jobs`` Whisper-Local requests for ``audio``; returns the curve until each
    has its one result (and the pools are back at their minimum, with ``idle``)."""
    ids = [6 * 10**8 + time.time_ns() % 10**8 * 100 + i for i in range(jobs)]
    curve = Curve(url, URL, VHOST)
    try:
        run_backlog(curve, URL, results, str(audio), ids)
        if idle:
            speech.wait_until(
                lambda: (
                    (last := curve.now()) is not None
                    and all(last.pools.get(name, 0) == n for name, n in IDLE.items())
                    and last.in_flight == 0
                ),
                240,
                f"the pools back at {IDLE}",
            )
    finally:
        curve.stop()
    assert all(len(results.all(i)) == 1 for i in ids), "a job answered twice or never"
    print(f"\n{jobs} x {audio.name}:\n{curve.table()}")
    return curve


def test_the_pools_follow_the_audio_seconds_and_the_deadline(
    cluster: RayCluster, url: str, speech_dir: Path, clip: Any
) -> None:
    long_file, _ = speech.four_minutes(speech_dir)
    short = clip("en_office", ".mp3")
    results = amqp.ResultCollector(URL)
    try:
        _deploy(cluster, url, 600, ASLEEP)
        # 8 minutes of audio: one replica's share by the deadline, even at the real-time
        # speed a pool that never ran is taken to have.
        relaxed = _phase(url, long_file, 2, results)
        # A new deadline restarts the replicas (they read it when they start): each pool is
        # back at its minimum before the next phase.
        _deploy(cluster, url, 10)
        clips = _phase(url, short, FILES, results)
        tight = _phase(url, long_file, FILES, results, idle=True)
    finally:
        results.close()
    peaks = {
        name: (curve.peak("TranscriberGPU"), curve.peak("TranscriberCPU"))
        for name, curve in (("600 s, long", relaxed), ("10 s, clips", clips), ("10 s, long", tight))
    }
    print(f"peak (GPU, CPU) replicas: {peaks}")
    # Every pool at zero when the first phase's jobs came: they waited (each one succeeded,
    # see _phase) for the GPU pool, woken first. The CPU pool is not needed for 8 minutes
    # of audio by a 600 s deadline; it stayed at zero in the one run since queued jobs stop
    # waking pools that serve, too few to assert its peak, so the order is asserted.
    awake = [s.pools for s in relaxed.samples if any(s.pools.values())]
    assert not any(relaxed.samples[0].pools.values()), relaxed.samples[0]
    assert awake and awake[0].get("TranscriberGPU") == 1, awake[:1]
    assert awake[0].get("TranscriberCPU", 0) == 0, awake[:1]
    # The clips' backlog lasts a few seconds, about the GPU pool's upscale delay: it may or
    # may not wake it; the CPU pool stays at one either way.
    assert peaks["10 s, clips"][1] == 1, peaks
    assert peaks["600 s, long"][0] == 1 and peaks["10 s, long"] == (1, 2), peaks
