"""The model pool scales on the backlog's audio seconds, by a drain deadline, on a simulated
cluster: a head and two workers offering `whisper_cpu`, raylets on loopback, running
`cluster/serve_cluster.yaml` with the CPU pool between 1 and 2 replicas and a request target
so high that requests in flight never ask for a second replica: only the backlog's audio can.

- With the default deadline (SCALE_TARGET_DRAIN_SEC=600) a few 4-minute files keep one
  replica; with a 10 s deadline the same files scale the pool to two, while as many short
  clips keep it at one; once the queue drains the pool is back at its minimum. Every job has
  one result while replicas come and go.

Prints the curves (`-s`)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import amqp, speech
from tests.support.curve import Curve, health, run_backlog
from tests.support.ray_cluster import (
    RayCluster,
    cluster_config,
    deployments,
    head_and_cpu_workers,
    service_env,
)
from tests.support.serve_process import free_port

VHOST = "whisper_drain_test"
URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
FILES = 6  # 4-minute files a phase: 24 minutes of audio
READING_THE_DEADLINE = ("ServeReplica:whisper:Ingest", "ServeReplica:whisper:TranscriberCPU")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Iterator[RayCluster]:
    work = tmp_path_factory.mktemp("drain")
    amqp.fresh_vhost(VHOST)
    env = service_env(work, speech_dir, URL, AMQP_DEPTH_POLL_SEC="1", FANOUT_UNIT_SEC="60")
    with head_and_cpu_workers(work, env) as ray:
        yield ray


def _deploy(cluster: RayCluster, port: int, drain_s: int) -> None:
    config = cluster_config(port)
    [app] = config["applications"]
    app["runtime_env"] = {"env_vars": {"SCALE_TARGET_DRAIN_SEC": str(drain_s)}}
    app["args"]["pools"] = [p for p in app["args"]["pools"] if p["name"] == "TranscriberCPU"]
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "TranscriberGPU"]
    by_name = deployments(config)
    # Serve averages the Ingest's reports (the backlog) over this look-back: a short one, so
    # the backlog of a phase that takes 20 s at 50x is seen while it lasts.
    by_name["Ingest"]["autoscaling_config"].update(
        min_replicas=1, max_replicas=1, look_back_period_s=2
    )
    pool = by_name["TranscriberCPU"]
    pool["max_ongoing_requests"] = 64
    pool["autoscaling_config"].update(
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=64,
        # Longer than a clip's second counted as a typical (4-minute) job before it decodes,
        # averaged over the look-back.
        upscale_delay_s=8,
        downscale_delay_s=5,
    )
    path = cluster.work / f"serve_drain_{drain_s}.yaml"
    path.write_text(yaml.safe_dump(config))
    cluster.serve_deploy(path)


def _rolled_out(cluster: RayCluster, url: str, drain_s: int) -> bool:
    """The deploy asking for ``drain_s`` runs: every live Ingest and CPU replica was started
    with it (they read the deadline when they start), one CPU replica runs, and the service
    is ready."""
    try:
        pools = health(url).get("pools", {}).get("TranscriberCPU", {}).get("replicas", {})
    except Exception:  # not listening yet, or the proxy before the app
        return False
    if pools != {"RUNNING": 1}:
        return False
    asked = re.compile(rf'"SCALE_TARGET_DRAIN_SEC":\s*"{drain_s}"')
    replicas = [
        actor
        for actor in cluster.state("actors")
        if actor["state"] == "ALIVE"
        and actor["class_name"]
        in ("ServeReplica:whisper:Ingest", "ServeReplica:whisper:TranscriberCPU")
    ]
    return len(replicas) == 2 and all(
        asked.search(actor.get("serialized_runtime_env") or "") for actor in replicas
    )


def _phase(url: str, audio: Path, jobs: int, results: amqp.ResultCollector) -> Curve:
    """Publish ``jobs`` Whisper-Local requests for ``audio``; returns the curve until each
    has its one result and the pool is back at one replica."""
    ids = [6 * 10**8 + time.time_ns() % 10**8 * 100 + i for i in range(jobs)]
    curve = Curve(url, URL, VHOST)
    try:
        run_backlog(curve, URL, results, str(audio), ids)
        speech.wait_until(
            lambda: (last := curve.now()) is not None and last.pool == 1 and last.in_flight == 0,
            240,
            "the pool back at its minimum",
        )
    finally:
        curve.stop()
    assert all(len(results.all(i)) == 1 for i in ids), "a job answered twice or never"
    print(f"\n{jobs} x {audio.name}:\n{curve.table()}")
    return curve


def test_the_pool_follows_the_audio_seconds_and_the_deadline(
    cluster: RayCluster, speech_dir: Path, clip: Any
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    long_file, _ = speech.four_minutes(speech_dir)
    short = clip("en_office", ".mp3")
    results = amqp.ResultCollector(URL)
    try:
        _deploy(cluster, port, 600)
        speech.wait_until(lambda: _rolled_out(cluster, url, 600), 300, "a 600 s deadline")
        relaxed = _phase(url, long_file, FILES, results)
        _deploy(cluster, port, 10)
        speech.wait_until(lambda: _rolled_out(cluster, url, 10), 300, "a 10 s deadline")
        clips = _phase(url, short, FILES, results)
        tight = _phase(url, long_file, FILES, results)
    finally:
        results.close()
    peaks = {
        name: max(s.pool for s in curve.samples)
        for name, curve in (("600 s, long", relaxed), ("10 s, clips", clips), ("10 s, long", tight))
    }
    print(f"peak CPU replicas: {peaks}")
    assert peaks == {"600 s, long": 1, "10 s, clips": 1, "10 s, long": 2}, peaks
