"""One real `serve run serve_config.yaml` on a local Ray, shared by every integration test.

Settings come from the environment exactly as a user would set them: tiny.en by default (the
language does not matter for most tests), base for Spanish, small limits to test them cheaply.
The only config changes: the HTTP port, and autoscaling delays short enough and a target low
enough to watch the pool scale in a test.

The app starts while RabbitMQ is stopped (it must still serve HTTP and report the broker down),
and its shutdown is checked at the end: every job in flight is answered once or handed back.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest import contract as c
from serve_app.store import JobStore, open_engine
from tests.support import amqp, speech
from tests.support.s3 import S3Server
from tests.support.serve_process import ServiceFailedError, replica_pids, serve_run

MAX_FILE_SIZE_MB = 2
MAX_AUDIO_DURATION_SEC = 600
WORKERS_COUNT = 4
FANOUT_UNIT_SEC = 30
AMQP_PUBLISH_TIMEOUT_SEC = 3
INGEST_REPLICAS = 2
# Above what any other test keeps waiting (16 clips of 30 s at most), below test_admission's.
MAX_BACKLOG_AUDIO_SEC = 900
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
API_KEY = "test-key-2"
OTHER_KEY = "test-key-1"
API_KEYS = f"{OTHER_KEY},{API_KEY}"
ADMIN_KEY = "test-admin-key"
WEBHOOK_SECRET = "webhook-test-secret"
# Object storage (tests/support/s3.py): uploads spool to a bucket, so a job's audio reaches the
# Ingest through the storage only; s3:// sources in AUDIO_BUCKET (API_KEY's under its
# folder); results written back to RESULTS_BUCKET.
SPOOL_BUCKET = "whisper-spool"
AUDIO_BUCKET = "audio-in"
RESULTS_BUCKET = "whisper-results"
KEY_AUDIO_PREFIX = "key2/"
S3_TIMEOUT_SEC = 2
DEPLOYMENT_OVERRIDES = {
    # Held at two (the shipped policy still runs): tests count their consumers and prefetch.
    "Ingest": {
        "autoscaling_config": {"min_replicas": INGEST_REPLICAS, "max_replicas": INGEST_REPLICAS}
    },
    # The two ingest replicas hold 8 jobs: a target of 2 lets them scale the pool.
    "TranscriberCPU": {
        "autoscaling_config": {
            "upscale_delay_s": 2,
            "downscale_delay_s": 10,
            "target_ongoing_requests": 2,
        },
        "ray_actor_options": {"num_cpus": 0.5},
    },
}


@dataclass
class Service:
    url: str
    tmp_dir: Path
    audio_dir: Path
    log: Path
    data_dir: Path
    # /health and /v1/models as seen while the broker was down at start.
    health_broker_down: dict[str, Any] = field(default_factory=dict)
    models_broker_down: int = 0
    job_broker_down: int = 0
    restart: Callable[[], None] = field(default=lambda: None)
    pid: int = 0  # of `serve run`: every Ray process of this app descends from it
    s3: S3Server | None = None

    @property
    def storage(self) -> S3Server:
        assert self.s3 is not None
        return self.s3

    def audio_of(self, job_id: str) -> str:
        """Where the service keeps a job's audio (never in its API answers), from its store."""
        engine = open_engine(f"sqlite:///{self.data_dir / 'whisper.db'}")
        try:
            return JobStore(engine).get(job_id).audio_path
        finally:
            engine.dispose()

    def replica_pids(self, deployment: str) -> list[int]:
        """Processes of this app's replicas of ``deployment`` (for fault tests to kill)."""
        return replica_pids(self.pid, deployment)

    def client(self, timeout: float = 120, api_key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def health(self) -> dict[str, Any]:
        """/health with its details (an admin key's view)."""
        with self.client(timeout=30, api_key=ADMIN_KEY) as client:
            response = client.get("/health")
        assert response.status_code in (200, 503), f"{response.text}\n{self.errors()}"
        body: dict[str, Any] = response.json()
        return body

    def errors(self, lines: int = 60) -> str:
        """The serve log's last error lines and tracebacks: for failure messages."""
        text = self.log.read_text(errors="replace").splitlines()
        marks = ("Traceback", "ERROR", "Error:", "  File ", "    ")
        return "\n".join([line for line in text if any(m in line for m in marks)][-lines:])


def _empty_contract_queues() -> None:
    with amqp.connect(RABBITMQ_URL) as conn:
        channel = conn.channel()
        amqp.declare_like_a_producer(channel)
        channel.queue_declare(c.REJECTED_QUEUE, durable=True)
        for queue in (c.REQUEST_QUEUE, c.RESULT_QUEUE, c.RETRY_QUEUE, c.REJECTED_QUEUE):
            channel.queue_purge(queue)
        for queue in (c.JOB_QUEUE, c.JOB_RETRY_QUEUE):
            channel.queue_delete(queue)


@pytest.fixture(scope="session")
def service(
    tmp_path_factory: pytest.TempPathFactory, speech_dir: Path, s3: S3Server
) -> Iterator[Service]:
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
        "MAX_BACKLOG_AUDIO_SEC": str(MAX_BACKLOG_AUDIO_SEC),
        # With two CPU replicas of half a core (DEPLOYMENT_OVERRIDES), every replica at its
        # maximum fits the 2-core machine Ray sees: 0.3 for decoders, 1 for the pool, 0.5
        # for the Diarizer. The cluster tests keep the shipped reservations.
        "DECODE_NUM_CPUS": "0.1",
        # Units of 30 s: a 4-minute file fans out in about ten, so a kill can land mid-file.
        "FANOUT_UNIT_SEC": str(FANOUT_UNIT_SEC),
        # A dead Ingest replica's claims run out in this long (60 s by default).
        "JOB_LEASE_SEC": "20",
        "OUTBOX_GRACE_SEC": "10",
        "AMQP_PUBLISH_TIMEOUT_SEC": str(AMQP_PUBLISH_TIMEOUT_SEC),
        # Short, so that shutdown hands unfinished jobs back instead of finishing them all.
        "INGEST_SHUTDOWN_GRACE_SEC": "1",
        "API_KEYS": API_KEYS,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_BACKOFF_SEC": "0.5",
        "WEBHOOK_MAX_ATTEMPTS": "3",
        # The test receivers listen on 127.0.0.1; every other internal address stays refused.
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "API_ADMIN_KEYS": ADMIN_KEY,
        # JSON jobs of user keys name files in their own folders only.
        "API_KEY_AUDIO_ROOTS": json.dumps(
            {API_KEY: [str(audio_dir), str(speech_dir)], OTHER_KEY: [str(speech_dir)]}
        ),
        **s3.env(),
        "S3_TIMEOUT_SEC": str(S3_TIMEOUT_SEC),
        "SPOOL_BUCKET": s3.bucket(SPOOL_BUCKET),
        "ALLOWED_AUDIO_BUCKETS": s3.bucket(AUDIO_BUCKET),
        "API_KEY_AUDIO_BUCKETS": json.dumps({API_KEY: [f"{AUDIO_BUCKET}/{KEY_AUDIO_PREFIX}"]}),
        "RESULTS_BUCKET": s3.bucket(RESULTS_BUCKET),
        # Every replica log line in serve run's output: Ray folds lines that differ only in
        # numbers ("[repeated 2x across cluster]"), and the fault tests count them.
        "RAY_DEDUP_LOGS": "0",
        # Ray's own servers on loopback only, as scripts/run.sh runs them.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    waiting_clip = speech.synthesize("en_office", speech_dir)
    amqp.rabbitmqctl("stop_app")
    stack = contextlib.ExitStack()

    def start() -> tuple[str, Path, int]:
        url, proc, log = stack.enter_context(serve_run(work, env, deployments=DEPLOYMENT_OVERRIDES))
        return url, log, proc.pid

    try:
        url, log, pid = start()
        service = Service(
            url=url,
            tmp_dir=tmp_dir,
            audio_dir=audio_dir,
            log=log,
            data_dir=work / "data",
            pid=pid,
            s3=s3,
        )
        service.health_broker_down = service.health()
        with service.client() as client:
            service.models_broker_down = client.get("/v1/models").status_code
            service.job_broker_down = client.post(
                "/v1/jobs", json={"audio_file_path": str(waiting_clip)}
            ).status_code
        amqp.rabbitmqctl("start_app")
        _wait_for_consumers()

        def restart() -> None:
            """Stop `serve run` (as Ctrl-C does) and start it again on the same data."""
            stack.close()
            service.url, service.log, service.pid = start()
            _wait_for_consumers()

        service.restart = restart
        yield service
        in_flight = _jobs_in_flight_at_shutdown(service, speech_dir)
        stopping = time.monotonic()
        stack.close()
        _check_shutdown(in_flight, time.monotonic() - stopping)
    except ServiceFailedError as exc:
        pytest.fail(str(exc))
    finally:
        stack.close()
        amqp.rabbitmqctl("start_app")


def _wait_for_consumers() -> None:
    # Each ingest replica reconnects on its own backoff schedule (at most 30 s apart).
    for queue in (c.REQUEST_QUEUE, c.JOB_QUEUE):
        speech.wait_until(
            lambda queue=queue: amqp.queue_depth(RABBITMQ_URL, queue)[1] == INGEST_REPLICAS,  # type: ignore[misc]
            120,
            f"every ingest replica to consume {queue}",
        )


def _jobs_in_flight_at_shutdown(service: Service, speech_dir: Path) -> list[int]:
    """Publish long jobs and return once the ingest holds them; the caller then stops Serve."""
    # Four minutes each, eight of them (every prefetch slot of both ingest replicas): after a
    # full run `serve run` has taken up to its 60 s limit to act on SIGINT, and six such jobs
    # were all answered within it (none handed back); eight take longer than that.
    clip, _ = speech.four_minutes(speech_dir)
    ids = [
        10**9 + int(time.time()) % 10**6 * 10 + i for i in range(INGEST_REPLICAS * WORKERS_COUNT)
    ]
    amqp.publish(RABBITMQ_URL, *({"attachment_id": i, "audio_file_path": str(clip)} for i in ids))
    speech.wait_until(
        lambda: amqp.queue_depth(RABBITMQ_URL, c.REQUEST_QUEUE)[0] == 0, 30, "jobs taken"
    )
    return ids


def _check_shutdown(ids: list[int], stopped_in_s: float) -> None:
    """After `serve run` stopped: each job was answered exactly once or is back in the queue,
    never both, never neither."""
    answered: dict[int, int] = dict.fromkeys(ids, 0)
    for _, body in amqp.drain(RABBITMQ_URL, c.RESULT_QUEUE):
        result = json.loads(body)
        if result["attachment_id"] in answered:
            answered[result["attachment_id"]] += 1
    requeued = [
        json.loads(body)["attachment_id"] for _, body in amqp.drain(RABBITMQ_URL, c.REQUEST_QUEUE)
    ]
    for job in ids:
        assert answered[job] + requeued.count(job) == 1, (answered, requeued)
    assert requeued, (
        f"the short shutdown grace should have handed some job back (serve run took "
        f"{stopped_in_s:.0f} s to stop)"
    )
    print(f"shutdown: serve run stopped in {stopped_in_s:.1f} s; {len(requeued)} handed back")


@pytest.fixture(scope="session")
def results(service: Service) -> Iterator[amqp.ResultCollector]:
    collector = amqp.ResultCollector(RABBITMQ_URL)
    yield collector
    collector.close()
