"""A backlog grows the pipeline, on the simulated cluster of this package (a head and two
workers offering `whisper_cpu`, separate raylets on loopback; one CPU on the head, two on each
worker; the worker offering `whisper_gpu` has no GPU, so the shipped GPU pool cannot start
there), running `cluster/serve_cluster.yaml` with smaller bounds and delays. A backlog far
beyond what one Ingest replica takes makes the Ingest (scaled on the queue's depth by its own
policy) and the CPU pool rise to their maximum, and the jobs in flight (deliveries held, as
RabbitMQ counts them) with them; once the queue drains, all of them fall back. Every job has
one result. The decoders of the Gateway and the Ingest are in Ray's accounting: a worker
offers a CPU for its model replica and one for them (with one in all, an Ingest replica
spread there left no room for the second model replica: the pool stayed at one).

The curve is printed (`-s`); bench/RESULTS.md records one run's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ingest import contract as c
from tests.support import amqp, speech
from tests.support.curve import Curve, health, run_backlog
from tests.support.ray_cluster import RayCluster, cluster_config, deployments

VHOST = "whisper_scaling_test"
URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
WORKERS_COUNT = 4
INGEST_MAX = 3
POOL_MAX = 2
JOBS = 60
# Enough that jobs still wait when the three replicas hold theirs.
CUT_JOBS = 30
# What the Gateway and each Ingest replica reserve for their decoders by default
# (DECODE_NUM_CPUS, MAX_DECODED_AUDIO_MB).
DECODERS = {"CPU": 0.25, "memory": 1024**3}


def _config(work: Path, port: int, ingest: tuple[int, int] = (1, INGEST_MAX)) -> Path:
    """The shipped cluster config on loopback, bounded to this machine and quick to react:
    the Ingest between ``ingest`` replicas, the CPU pool between 1 and 2 (one per worker),
    each averaging what it scales on over 5 s (30 s by default: the pipeline fell back half
    a minute after the last result)."""
    config = cluster_config(port)
    by_name = deployments(config)
    quick = {"upscale_delay_s": 2, "downscale_delay_s": 5, "look_back_period_s": 5}
    by_name["Ingest"]["autoscaling_config"].update(
        min_replicas=ingest[0], max_replicas=ingest[1], **quick
    )
    by_name["TranscriberCPU"]["autoscaling_config"].update(
        min_replicas=1, max_replicas=POOL_MAX, **quick
    )
    config["applications"][0]["runtime_env"] = {
        "env_vars": {
            "RABBITMQ_URL": URL,
            "WORKERS_COUNT": str(WORKERS_COUNT),
            # Above a model replica's start on a fresh worker here.
            "POOL_START_WAIT_SEC": "120",
        }
    }
    path = work / "serve_scaling.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _reserved(cluster: RayCluster, deployment: str) -> list[dict[str, float]]:
    """What each live replica of ``deployment`` reserves, as Ray accounts it."""
    return [
        actor["required_resources"]
        for actor in cluster.state("actors")
        if actor["state"] == "ALIVE" and actor["class_name"] == f"ServeReplica:whisper:{deployment}"
    ]


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def cluster(sim_cluster: RayCluster) -> RayCluster:
    return sim_cluster


@pytest.fixture(scope="module")
def port(cluster: RayCluster, sim_port: int, clip: Any) -> int:
    """The service deployed on the cluster, listening on this port. The first request, sent
    as soon as the Gateway answers, is served even if the CPU pool is still loading its
    model: it waits for the starting pool (it got 503 "No model replica is running")."""
    amqp.fresh_vhost(VHOST)
    port = sim_port
    url = f"http://127.0.0.1:{port}"
    cluster.serve_deploy(_config(cluster.work, port))
    looks: list[int] = []

    def gateway_answers() -> bool:
        try:
            health = httpx.get(f"{url}/health", timeout=10)
            looks.append(health.status_code)
            return "status" in health.json()  # the Gateway's, not the proxy's before it
        except (httpx.TransportError, ValueError):
            return False

    speech.wait_until(gateway_answers, 300, "the Gateway to answer", every=0.2)
    with open(clip("en_office", ".mp3"), "rb") as f:
        first = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": f}, timeout=300)
    assert first.status_code == 200, first.text
    print(f"first request: 200 with /health at {looks[-1]} when it was sent")
    speech.wait_until(lambda: _up(url), 300, "the service")
    return port


def test_a_backlog_grows_the_ingest_and_the_pool_and_they_shrink_when_it_drains(
    cluster: RayCluster, port: int, clip: Any
) -> None:
    url = f"http://127.0.0.1:{port}"
    for name in ("Gateway", "Ingest"):
        assert _reserved(cluster, name) == [DECODERS], name
    audio = clip("en_office", ".mp3")
    ids = [8 * 10**8 + time.time_ns() % 10**8 * 100 + i for i in range(JOBS)]
    results = amqp.ResultCollector(URL)
    curve = Curve(url, URL, VHOST)
    try:
        run_backlog(curve, URL, results, str(audio), ids)
        drained = time.monotonic()

        def settled() -> bool:
            last = curve.now()
            return last is not None and (last.ingest, last.pool, last.in_flight) == (1, 1, 0)

        speech.wait_until(settled, 180, "the Ingest and the pool back at one replica")
        fell_back = time.monotonic() - drained
    finally:
        samples = curve.stop()
        results.close()
    print("\n" + curve.table())
    assert all(len(results.all(i)) == 1 for i in ids), "a job answered twice or never"
    peak = max(samples, key=lambda s: s.in_flight)
    assert max(s.ingest for s in samples) == INGEST_MAX, samples
    assert max(s.pool for s in samples) == POOL_MAX, samples
    # The fixed cap before: two Ingest replicas of WORKERS_COUNT deliveries each.
    assert peak.in_flight > 2 * WORKERS_COUNT, samples
    assert peak.in_flight <= INGEST_MAX * WORKERS_COUNT, samples
    print(
        f"{JOBS} jobs: peak {peak.in_flight} in flight at {peak.t} s with {peak.ingest} Ingest "
        f"and {peak.pool} CPU replicas; back to one of each {fell_back:.0f} s after the last "
        "result"
    )


def test_ingest_replicas_scaled_down_mid_backlog_drain_and_lose_nothing(
    cluster: RayCluster, port: int, clip: Any
) -> None:
    """Three Ingest replicas each holding jobs are cut to one: the two going away stop
    consuming and finish (or hand back) what they hold; every job has one result."""
    url = f"http://127.0.0.1:{port}"
    cluster.serve_deploy(_config(cluster.work, port, ingest=(3, 3)))
    speech.wait_until(
        lambda: health(url).get("broker", {}).get("ingest_replicas") == 3, 180, "3 Ingest"
    )
    audio = clip("en_office", ".mp3")
    ids = [7 * 10**8 + time.time_ns() % 10**8 * 100 + i for i in range(CUT_JOBS)]
    results = amqp.ResultCollector(URL)
    try:
        amqp.publish(URL, *({"attachment_id": i, "audio_file_path": str(audio)} for i in ids))
        # More than two replicas' prefetch held: every replica holds jobs.
        speech.wait_until(
            lambda: amqp.unacked(c.REQUEST_QUEUE, VHOST) > 2 * WORKERS_COUNT,
            60,
            "all three replicas holding jobs",
            every=0.2,
        )
        held = amqp.unacked(c.REQUEST_QUEUE, VHOST)
        cluster.serve_deploy(_config(cluster.work, port, ingest=(1, 1)))
        answered = [results.wait(i, 600) for i in ids]
        speech.wait_until(
            lambda: health(url).get("broker", {}).get("ingest_replicas") == 1, 180, "1 Ingest"
        )
        speech.wait_until(
            lambda: amqp.unacked(c.REQUEST_QUEUE, VHOST) == 0, 60, "every delivery settled"
        )
    finally:
        results.close()
    assert all(result["success"] is True for result in answered), answered
    assert all(len(results.all(i)) == 1 for i in ids), "a job answered twice or never"
    print(f"3 -> 1 Ingest replicas with {held} jobs held: {CUT_JOBS} jobs, one result each")
