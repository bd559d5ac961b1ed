"""What the Ingest shows of its AMQP load, against the real RabbitMQ: each lane's depth (work
and retry queues, read with a passive declare) and the deliveries it holds per lane. The
job's work is a stand-in held until the test lets it go; the store is a real SQLite file."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from ingest import contract as c
from ingest.transport import AmqpTransport, PublishError, TransportConfig
from serve_app.schemas import QueuedTranscriptionRequest, Transcript
from serve_app.store import ResultLedger, open_engine
from tests.support import amqp
from tests.support.consumers import Running
from tests.support.waiting import until

VHOST = "whisper_load_test"
URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
_ids = itertools.count(int(time.time()) % 100000 * 1000 + 700)


@pytest.fixture(scope="module")
def results() -> Iterator[amqp.ResultCollector]:
    collector = amqp.ResultCollector(amqp.fresh_vhost(VHOST))
    yield collector
    collector.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[ResultLedger]:
    engine = open_engine(f"sqlite:///{tmp_path / 'whisper.db'}")
    yield ResultLedger(engine)
    engine.dispose()


class Held:
    """Each job waits until released; counts the jobs that started."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()

    async def __call__(self, request: QueuedTranscriptionRequest) -> Transcript:
        self.started += 1
        await self.release.wait()
        return Transcript(
            text="ok", language="en", language_probability=1, duration=1, segments=[], model="m"
        )


def _to_retry_queue(*bodies: dict[str, object]) -> None:
    with amqp.connect(URL) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish(
                c.RETRY_EXCHANGE,
                c.RETRY_ROUTING_KEY,
                json.dumps(body).encode(),
                pika.BasicProperties(delivery_mode=2),
            )


async def test_depths_and_deliveries_held_follow_the_backlog(
    results: amqp.ResultCollector, ledger: ResultLedger
) -> None:
    jobs = [
        {"attachment_id": next(_ids), "audio_file_path": f"/tmp/shared_audio/{i}.mp3"}
        for i in range(7)
    ]
    amqp.publish(URL, *jobs[:5])
    _to_retry_queue(*jobs[5:])  # back in the work queue once their TTL (5 s) passes
    work = Held()
    async with Running(URL, work, ledger, prefetch=2) as consumer:
        watching = asyncio.create_task(consumer.watch_queues(0.2))
        try:
            await until(lambda: work.started == 2, 20, "two deliveries started")
            depths = await consumer.transport.queue_depths()
            # Two delivered (held, unacked: no longer waiting); the rest waits or retries.
            assert depths["requests"].total == 5
            assert depths["requests"].retrying <= 2 and depths["jobs"].total == 0
            assert consumer.status.in_flight_by_lane == {"requests": 2}
            work.release.set()
            for job in jobs:
                await asyncio.to_thread(results.wait, job["attachment_id"], 60)
            await until(
                lambda: consumer.status.queues.get("requests") == {"waiting": 0, "retrying": 0},
                10,
                "the watcher saw the lane drained",
            )
            await until(lambda: consumer.status.in_flight == 0, 10, "every delivery settled")
            assert consumer.status.in_flight_by_lane == {"requests": 0}
        finally:
            watching.cancel()
    assert all(len(results.all(job["attachment_id"])) == 1 for job in jobs)


async def test_depths_need_a_connection() -> None:
    with pytest.raises(PublishError):
        await AmqpTransport(TransportConfig(url=URL, prefetch=1)).queue_depths()
