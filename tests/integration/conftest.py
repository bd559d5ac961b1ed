"""One real `serve run serve_config.yaml` on a local Ray, shared by every integration test.

Settings come from the environment exactly as a user would set them: tiny.en by default (the
language does not matter for most tests), base for Spanish, small limits to test them cheaply.
The only config changes: the HTTP port, two competing ingest replicas, and autoscaling delays
short enough to watch in a test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingest import contract as c
from tests.support import amqp
from tests.support.serve_process import ServiceFailedError, serve_run

MAX_FILE_SIZE_MB = 2
MAX_AUDIO_DURATION_SEC = 120
WORKERS_COUNT = 4
INGEST_REPLICAS = 2
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEPLOYMENT_OVERRIDES = {
    "Ingest": {"num_replicas": INGEST_REPLICAS},
    "TranscriberCPU": {"autoscaling_config": {"upscale_delay_s": 2, "downscale_delay_s": 10}},
}


@dataclass
class Service:
    url: str
    tmp_dir: Path
    audio_dir: Path
    log: Path

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def health(self) -> dict[str, object]:
        with self.client(timeout=30) as client:
            body: dict[str, object] = client.get("/health").json()
            return body


def _empty_contract_queues() -> None:
    with amqp.connect(RABBITMQ_URL) as conn:
        channel = conn.channel()
        amqp.declare_like_a_producer(channel)
        channel.queue_declare(c.REJECTED_QUEUE, durable=True)
        for queue in (c.REQUEST_QUEUE, c.RESULT_QUEUE, c.RETRY_QUEUE, c.REJECTED_QUEUE):
            channel.queue_purge(queue)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("service")
    tmp_dir = work / "spool"
    audio_dir = work / "shared_audio"
    audio_dir.mkdir()
    _empty_contract_queues()
    env = {
        "WHISPER_MODEL": "tiny.en",
        "WHISPER_EXTRA_MODELS": "base",
        "MAX_FILE_SIZE_MB": str(MAX_FILE_SIZE_MB),
        "MAX_AUDIO_DURATION_SEC": str(MAX_AUDIO_DURATION_SEC),
        "MODELS_DIR": str(work / "models"),
        "TMP_DIR": str(tmp_dir),
        "DATA_DIR": str(work / "data"),
        "ALLOWED_AUDIO_ROOTS": f"{audio_dir},{speech_dir}",
        "RABBITMQ_URL": RABBITMQ_URL,
        "WORKERS_COUNT": str(WORKERS_COUNT),
    }
    try:
        with serve_run(work, env, deployments=DEPLOYMENT_OVERRIDES) as (url, _, log):
            yield Service(url=url, tmp_dir=tmp_dir, audio_dir=audio_dir, log=log)
    except ServiceFailedError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def results(service: Service) -> Iterator[amqp.ResultCollector]:
    collector = amqp.ResultCollector(RABBITMQ_URL)
    yield collector
    collector.close()
