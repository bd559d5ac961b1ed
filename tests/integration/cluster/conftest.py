"""The simulated cluster the scaling tests share: a head with one CPU, two workers offering
`whisper_cpu` and one offering `whisper_gpu` (and no GPU), two CPUs each, as separate
raylets on loopback. Started once for the package and stopped after its last test, before
the rest of the suite runs; `test_cluster_nodes` starts and kills nodes, so it has its own.

What differs between the modules (their RabbitMQ vhost, WORKERS_COUNT, ...) is in each
deploy's `runtime_env`, not in the nodes' environment. Serve's proxy keeps the port it
started on, so every deploy on this cluster listens on `sim_port`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ray_cluster import RayCluster, head_and_cpu_workers, service_env
from tests.support.serve_process import free_port

# No such vhost: a deploy that does not name its own broker fails loudly instead of
# taking another test's messages.
UNSET_BROKER = "amqp://guest:guest@127.0.0.1:5672/no_vhost_named_by_the_deploy"


@pytest.fixture(scope="package")
def sim_cluster(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Iterator[RayCluster]:
    work = tmp_path_factory.mktemp("sim_cluster")
    env = service_env(work, speech_dir, UNSET_BROKER, AMQP_DEPTH_POLL_SEC="1")
    with head_and_cpu_workers(work, env, gpu_workers=("gpu-a",)) as ray:
        yield ray


@pytest.fixture(scope="package")
def sim_port() -> int:
    return free_port()
