"""The model pools scale on the backlog's audio seconds, by a drain deadline, on a simulated
cluster: a head, two workers offering `whisper_cpu` and one offering `whisper_gpu` (and no
GPU: the GPU pool runs tiny.en on its CPU), raylets on loopback, running
`cluster/serve_cluster.yaml` with the GPU pool between 0 and 1 replica, the CPU pool between
1 and 2, and a request target so high that requests in flight never ask for a replica: only
the backlog's audio can.

- With the default deadline (SCALE_TARGET_DRAIN_SEC=600), a few 4-minute files wake the GPU
  pool (filled first) and the CPU pool stays at one replica.
- With a 10 s deadline the same files scale the CPU pool to two as well (it takes what the
  GPU pool cannot drain by then), while as many short clips keep it at one.
- Once the queue drains both pools are back at their minimum, zero for the GPU pool. Every
  job has one result while replicas come and go.

Prints the curves (`-s`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import amqp, speech
from tests.support.curve import Curve, run_backlog
from tests.support.drain_deploy import deploy, drain_config, rolled_out
from tests.support.ray_cluster import RayCluster, head_and_cpu_workers, service_env
from tests.support.serve_process import free_port

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
IDLE = {"TranscriberGPU": 0, "TranscriberCPU": 1}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Iterator[RayCluster]:
    work = tmp_path_factory.mktemp("drain")
    amqp.fresh_vhost(VHOST)
    env = service_env(work, speech_dir, URL, AMQP_DEPTH_POLL_SEC="1", FANOUT_UNIT_SEC="60")
    with head_and_cpu_workers(work, env) as ray:
        ray.start_worker("gpu-a", {"whisper_gpu": 1}, num_cpus=2)
        yield ray


@pytest.fixture(scope="module")
def url() -> str:
    """Where the service listens: one port for the module (Serve's proxy keeps the first)."""
    return f"http://127.0.0.1:{free_port()}"


def _deploy(cluster: RayCluster, url: str, drain_s: int) -> None:
    port = int(url.rsplit(":", 1)[1])
    deploy(cluster, drain_config(port, drain_s, POOLS), f"serve_drain_{drain_s}")
    speech.wait_until(
        lambda: rolled_out(cluster, url, drain_s, IDLE), 300, f"a {drain_s} s deadline"
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
        _deploy(cluster, url, 600)
        # Half the files: enough to wake the GPU pool (and for it to be seen awake).
        relaxed = _phase(url, long_file, FILES // 2, results)
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
    # The clips' backlog lasts a few seconds, about the GPU pool's upscale delay: it may or
    # may not wake it; the CPU pool stays at one either way.
    assert peaks["10 s, clips"][1] == 1, peaks
    assert peaks["600 s, long"] == (1, 1) and peaks["10 s, long"] == (1, 2), peaks
