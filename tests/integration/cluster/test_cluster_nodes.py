"""Two Ray nodes on one machine, started as separate processes as an operator starts them: a
head, and a worker offering the `whisper_cpu` resource. `cluster/serve_cluster.yaml` is
deployed with `serve deploy`; model replicas must land only on the worker, a job published
on RabbitMQ is transcribed there, and killing the worker's raylet mid-job (then starting the
node again) ends with the job retried and exactly one result, while HTTP answers 503 with
Retry-After as long as no model replica exists."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ingest import contract as c
from serve_app.schemas import QueuedTranscriptionRequest
from serve_app.store import JobStore, UnitStore, open_engine
from tests.support import amqp, speech
from tests.support.ray_cluster import RayCluster, cluster_config, deployments, service_env
from tests.support.serve_process import free_port, paused

VHOST = "whisper_cluster_test"
URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
CPU_POOL = "ServeReplica:whisper:TranscriberCPU"
# Groups: how many parts the file was planned in, and the part's span.
DECODED = re.compile(r"Decoded part \d+ of (\d+) \(([\d.]+-[\d.]+) s\)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Iterator[RayCluster]:
    work = tmp_path_factory.mktemp("cluster")
    amqp.fresh_vhost(VHOST)
    env = service_env(
        work,
        speech_dir,
        URL,
        FANOUT_UNIT_SEC="30",
        # One 30 s decoding window a batch: parts of the job finish one after another, so a
        # node loss or a downscale lands mid-job. Batched together, a replica's parts (a
        # window each here) finished all at once.
        WHISPER_BATCH_SIZE="1",
        JOB_LEASE_SEC="20",
    )
    ray = RayCluster(work, env)
    try:
        ray.start_head(num_cpus=1)
        yield ray
    finally:
        ray.stop()


def _config(work: Path, port: int) -> Path:
    """The shipped cluster config for one machine (``cluster_config``), with one Ingest."""
    config = cluster_config(port)
    deployments(config)["Ingest"]["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    path = work / "serve_cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _transcribe(url: str, clip: Path) -> httpx.Response:
    with open(clip, "rb") as f:
        return httpx.post(
            f"{url}/v1/audio/transcriptions", files={"file": (clip.name, f)}, timeout=120
        )


def _replica_nodes(ray: RayCluster, class_name: str) -> list[str]:
    return [
        actor["node_id"]
        for actor in ray.state("actors")
        if actor["state"] == "ALIVE" and actor["class_name"] == class_name
    ]


def _cpu_node(ray: RayCluster) -> str:
    [node] = [n["node_id"] for n in ray.alive_nodes() if "whisper_cpu" in n["resources_total"]]
    return str(node)


def _long_job(speech_dir: Path) -> tuple[dict[str, Any], str, str]:
    """A Whisper-Local request for the 4-minute recording: (body, job key, reference text)."""
    clip, reference = speech.four_minutes(speech_dir)
    request = {"attachment_id": 9 * 10**8 + time.time_ns() % 10**8, "audio_file_path": str(clip)}
    return request, c.job_key(QueuedTranscriptionRequest.model_validate(request)), reference


def _wait_503(url: str, clip: Path, timeout: float) -> httpx.Response:
    answers: list[httpx.Response] = []

    def refused() -> bool:
        answers.append(_transcribe(url, clip))
        return answers[-1].status_code == 503

    speech.wait_until(refused, timeout, "HTTP to answer 503 while no model replica exists")
    return answers[-1]


def test_replicas_follow_whisper_cpu_and_a_lost_node_costs_no_job(
    cluster: RayCluster, speech_dir: Path, clip
) -> None:
    work = cluster.work
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    cluster.serve_deploy(_config(work, port))

    # Only the head so far: it offers no whisper_cpu, so the CPU pool has nowhere to go.
    short = clip("en_office", ".mp3")
    speech.wait_until(lambda: _gateway_up(url), 300, "the Gateway on the head")
    refused = _wait_503(url, short, 60)
    assert refused.headers.get("retry-after"), refused.headers
    assert "No model replica is running" in refused.json()["error"]["message"]
    assert _replica_nodes(cluster, CPU_POOL) == []
    # Not ready: the GPU pool sits at zero and the CPU pool cannot start (it said 200).
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "down", health.text

    worker = cluster.start_worker("cpu-worker", {"whisper_cpu": 1}, num_cpus=1)
    speech.wait_until(lambda: _transcribe(url, short).status_code == 200, 300, "a model replica")
    placed = time.monotonic() - started
    cpu_node = _cpu_node(cluster)
    assert _replica_nodes(cluster, CPU_POOL) == [cpu_node]
    head = [n["node_id"] for n in cluster.alive_nodes() if n["is_head_node"]]
    light = {
        name: _replica_nodes(cluster, f"ServeReplica:whisper:{name}")
        for name in ("Gateway", "Ingest")
    }
    assert light["Gateway"] == head and light["Ingest"] == head  # started before the worker

    # A long job over RabbitMQ, and the worker's raylet killed once some of its parts are done.
    request, key, reference = _long_job(speech_dir)
    results = amqp.ResultCollector(URL)
    engine = open_engine(f"sqlite:///{work / 'data' / 'whisper.db'}")
    units = UnitStore(engine)
    try:
        amqp.publish(URL, request)
        speech.wait_until(lambda: len(units.attempts(key)) >= 3, 300, "3 parts done")
        [raylet] = worker.pids("raylet")
        killed = time.monotonic()
        os.kill(raylet, signal.SIGKILL)
        refused = _wait_503(url, short, 90)
        refused_after = time.monotonic() - killed
        assert refused.headers.get("retry-after")
        done_at_kill = len(units.attempts(key))
        assert not results.all(request["attachment_id"]), "the job outran the kill"
        worker.stop()

        restarted = time.monotonic()
        cluster.start_worker("cpu-worker-again", {"whisper_cpu": 1}, num_cpus=1)
        result = results.wait(request["attachment_id"], 300)
        answered_after = time.monotonic() - restarted
        assert result["success"] is True, result
        assert speech.word_error_rate(reference, result["texto"]) < 0.25
        new_node = _cpu_node(cluster)
        assert new_node != cpu_node and _replica_nodes(cluster, CPU_POOL) == [new_node]
        speech.wait_until(
            lambda: (
                amqp.unacked(c.REQUEST_QUEUE, VHOST) == 0
                and amqp.queue_depth(URL, c.RETRY_QUEUE)[0] == 0
            ),
            60,
            "every delivery settled",
        )
        assert len(results.all(request["attachment_id"])) == 1
        assert _transcribe(url, short).status_code == 200
    finally:
        results.close()
        engine.dispose()
    print(
        f"placement: CPU replica on node {cpu_node[:12]} (whisper_cpu), Gateway and Ingest on "
        f"the head {head[0][:12]}; deployed and placed in {placed:.0f} s; raylet killed with "
        f"{done_at_kill} parts done, HTTP 503 after {refused_after:.1f} s; node started again "
        f"as {new_node[:12]}, one result {answered_after:.0f} s later (attempts "
        f"{result.get('attempts')})"
    )


def _gateway_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def _scaled(config_path: Path, replicas: int) -> Path:
    config = yaml.safe_load(config_path.read_text())
    pool = deployments(config)["TranscriberCPU"]["autoscaling_config"]
    pool.update(min_replicas=replicas, max_replicas=replicas)
    path = config_path.with_name(f"serve_cluster_{replicas}.yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def _replica_logs(cluster: RayCluster) -> dict[Path, int]:
    """The model replicas' log files on every node, with their sizes now."""
    folder = cluster.session_dir() / "logs" / "serve"
    return {f: f.stat().st_size for f in folder.glob("replica_whisper_TranscriberCPU_*.log")}


def _decoded_since(sizes: dict[Path, int], cluster: RayCluster) -> Counter[str]:
    return Counter(m[2] for m in _decoded_lines(sizes, cluster))


def _decoded_lines(sizes: dict[Path, int], cluster: RayCluster) -> list[re.Match[str]]:
    found: list[re.Match[str]] = []
    for path in _replica_logs(cluster):
        text = path.read_bytes()[sizes.get(path, 0) :].decode(errors="replace")
        found += DECODED.finditer(text)
    return found


def _downscale_mid_job(
    cluster: RayCluster, config: Path, units: UnitStore, key: str, sizes: dict[Path, int]
) -> int:
    """Scales the pool to one replica once a part is recorded and, with the model replicas
    paused (SIGSTOP), fewer parts are logged as decoded than were planned; returns how many
    were recorded then. A replica decodes many parts in one batch: without the pause, all 9
    were done by the time `serve deploy` returned (CI, 2026-12-05)."""
    done: list[int] = []

    def paused_check() -> bool:
        replicas = [
            int(actor["pid"])
            for actor in cluster.state("actors")
            if actor["state"] == "ALIVE" and actor["class_name"] == CPU_POOL
        ]
        with paused(replicas):
            lines = _decoded_lines(sizes, cluster)
            planned = int(lines[0][1]) if lines else None
            if units.attempts(key) and planned is not None and len(lines) < planned:
                cluster.serve_deploy(_scaled(config, 1))
                done.append(len(units.attempts(key)))
                return True
            return False

    speech.wait_until(paused_check, 300, "a part recorded and a part not decoded", every=0.2)
    return done[0]


def test_a_downscale_during_a_long_job_loses_and_repeats_nothing(
    cluster: RayCluster, speech_dir: Path
) -> None:
    """Two CPU replicas on two nodes; while a 4-minute job runs on both, the pool is scaled to
    one. The replica going away finishes what it holds (graceful_shutdown_timeout_s), nothing
    is retried, and every part is decoded exactly once."""
    config = cluster.work / "serve_cluster.yaml"
    assert config.exists(), "runs after the placement test, on its deployed app"
    cluster.start_worker("cpu-worker-b", {"whisper_cpu": 1}, num_cpus=1)
    cluster.serve_deploy(_scaled(config, 2))
    speech.wait_until(
        lambda: len(set(_replica_nodes(cluster, CPU_POOL))) == 2, 300, "a replica on each worker"
    )
    request, key, reference = _long_job(speech_dir)
    engine = open_engine(f"sqlite:///{cluster.work / 'data' / 'whisper.db'}")
    units, store = UnitStore(engine), JobStore(engine)
    results = amqp.ResultCollector(URL)
    sizes = _replica_logs(cluster)
    try:
        amqp.publish(URL, request)
        done_at_downscale = _downscale_mid_job(cluster, config, units, key, sizes)
        result = results.wait(request["attachment_id"], 300)
        speech.wait_until(lambda: len(_replica_nodes(cluster, CPU_POOL)) == 1, 300, "one replica")
        assert result["success"] is True, result
        assert speech.word_error_rate(reference, result["texto"]) < 0.25
        job = store.get(key)
        recorded = units.attempts(key)
        spans = [span for span, _ in recorded]
        assert len(spans) == len(set(spans)) >= 6 and {a for _, a in recorded} == {1}
        assert job.attempts == 1 and done_at_downscale < len(spans), (job, done_at_downscale)
        labels = [f"{s / 16000:.1f}-{e / 16000:.1f}" for s, e in spans]
        speech.wait_until(
            lambda: all(_decoded_since(sizes, cluster)[label] for label in labels), 30, "logs"
        )
        decoded = _decoded_since(sizes, cluster)
        assert all(decoded[label] == 1 for label in labels), decoded
        speech.wait_until(
            lambda: amqp.unacked(c.REQUEST_QUEUE, VHOST) == 0, 60, "every delivery settled"
        )
        assert len(results.all(request["attachment_id"])) == 1
    finally:
        results.close()
        engine.dispose()
    print(
        f"downscale 2 -> 1 replicas with {done_at_downscale} of {len(spans)} parts done: one "
        f"result, attempts {job.attempts}, every part decoded once"
    )
