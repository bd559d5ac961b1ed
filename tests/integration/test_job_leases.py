"""The job pipeline's edges against the real RabbitMQ and a real PostgreSQL store, without
Ray: orderly stops and lost channels are not crashes, a wait for room is not an attempt, bad
ids and fields end with one error result, and a duplicate of a running job is settled while
it runs. The job's work is played by stand-ins; what is under test is the claim, the runner
and the consumer around it."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest

from ingest import contract as c
from serve_app.errors import ServiceBusyError
from serve_app.schemas import QueuedTranscriptionRequest, Transcript
from serve_app.store import ResultLedger, open_engine
from tests.support import amqp
from tests.support.consumers import Running
from tests.support.databases import postgres_database
from tests.support.waiting import until

VHOST = "whisper_lease_test"
URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
_ids = itertools.count(int(time.time()) % 100000 * 1000 + 500)


@pytest.fixture(scope="module")
def results() -> Iterator[amqp.ResultCollector]:
    collector = amqp.ResultCollector(amqp.fresh_vhost(VHOST))
    yield collector
    collector.close()


@pytest.fixture(scope="module")
def ledger() -> Iterator[ResultLedger]:
    with postgres_database() as url:
        engine = open_engine(url)
        yield ResultLedger(engine)
        engine.dispose()


def _request(path: str, **extra: object) -> dict[str, object]:
    return {"attachment_id": next(_ids), "audio_file_path": path, "language": "", **extra}


def _transcript() -> Transcript:
    return Transcript(
        text="ok", language="en", language_probability=1, duration=1, segments=[], model="m"
    )


class Scripted:
    """Each call takes the next behaviour: "hang" (until cancelled), "busy" (no room for the
    audio), "slow" (a few seconds), then success."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.calls = 0

    async def __call__(self, request: QueuedTranscriptionRequest) -> Transcript:
        step = self.script[self.calls] if self.calls < len(self.script) else "ok"
        self.calls += 1
        if step == "hang":
            await asyncio.Event().wait()
        if step == "busy":
            raise ServiceBusyError("The service holds as much audio as it may", 10)
        if step == "slow":
            await asyncio.sleep(6)
        return _transcript()


async def test_orderly_stops_and_lost_channels_are_not_dead_workers(
    results: amqp.ResultCollector, ledger: ResultLedger
) -> None:
    """The old code counted each as a worker that died, and after three answered the job
    "Abandoned after 3 deliveries"."""
    job = _request("/tmp/shared_audio/stops.mp3")
    work = Scripted("hang", "hang", "hang")
    running = Running(URL, work, ledger, grace=0.5)
    async with running:
        amqp.publish(URL, job)
        await until(lambda: work.calls == 1, 20, "the first delivery started")
        # The channel goes (a broker restart, a network cut): the broker redelivers the job.
        amqp.rabbitmqctl("close_all_connections", "--vhost", VHOST, "lease test")
        await until(lambda: work.calls == 2, 30, "the redelivery started")
    # ... and the consumer stopped past its shutdown grace (a deploy, a downscale).
    async with Running(URL, work, ledger, grace=0.5):
        await until(lambda: work.calls == 3, 20, "the third delivery started")
    assert results.all(job["attachment_id"]) == []
    async with Running(URL, work, ledger) as consumer:
        result = await asyncio.to_thread(results.wait, job["attachment_id"], 30)
        await until(lambda: consumer.status.in_flight == 0, 10, "the delivery settled")
    assert result["success"] is True and result["attempts"] == 1
    key = str(job["attachment_id"])
    [stored] = [j for j in running.store.list_jobs(limit=100)[0] if j.external_id == key]
    assert (stored.status, stored.attempts) == ("completed", 1)
    assert len(results.all(job["attachment_id"])) == 1


async def test_a_wait_for_room_is_not_an_attempt(
    results: amqp.ResultCollector, ledger: ResultLedger
) -> None:
    """Three times no room (as many as a job's attempts): the old code answered "Failed after
    3 attempts"; now each comes back through the retry queue with its count unchanged."""
    job = _request("/tmp/shared_audio/room.mp3")
    work = Scripted("busy", "busy", "busy")
    async with Running(URL, work, ledger):
        amqp.publish(URL, job)
        result = await asyncio.to_thread(results.wait, job["attachment_id"], 60)
    assert result["success"] is True and result["attempts"] == 1 and work.calls == 4
    assert len(results.all(job["attachment_id"])) == 1


async def test_hostile_ids_and_fields_end_with_one_error_result(
    results: amqp.ResultCollector, ledger: ResultLedger
) -> None:
    """On PostgreSQL a 65-digit id, and a NUL in a path, made the store raise on every
    delivery: requeued each second forever, holding a prefetch slot."""
    huge, past = 10**64 + 7, 2**63 + 5
    nul = _request("/tmp/shared_audio/a\x00b.mp3")
    work = Scripted()
    async with Running(URL, work, ledger):
        amqp.publish(URL, _request("/tmp/a.mp3", attachment_id=huge))
        amqp.publish(URL, _request("/tmp/a.mp3", attachment_id=past), nul)
        answers = [
            await asyncio.to_thread(results.wait, key, 30)
            for key in (huge, past, nul["attachment_id"])
        ]
        await until(lambda: amqp.queue_depth(URL, c.REQUEST_QUEUE)[0] == 0, 10, "all taken")
        await until(lambda: amqp.unacked(c.REQUEST_QUEUE, VHOST) == 0, 10, "all settled")
        await asyncio.sleep(1.5)  # a requeued delivery would be answered again by now
    assert [a["success"] for a in answers] == [False] * 3 and work.calls == 0
    assert all("64-bit" in a["error_message"] for a in answers[:2])
    assert "cannot keep" in answers[2]["error_message"]
    assert all(len(results.all(k)) == 1 for k in (huge, past, nul["attachment_id"]))
    assert amqp.queue_depth(URL, c.RETRY_QUEUE)[0] == 0


async def test_a_duplicate_of_a_running_job_is_settled_while_it_runs(
    results: amqp.ResultCollector, ledger: ResultLedger
) -> None:
    """The old code held the duplicate, unacked, for as long as the job ran (past RabbitMQ's
    consumer timeout, the channel closes with every job on it)."""
    job = _request("/tmp/shared_audio/duplicate.mp3")
    work = Scripted("slow")
    async with Running(URL, work, ledger, lease_s=1.5) as consumer:
        amqp.publish(URL, job, job)  # a producer's duplicate, both delivered at once
        await until(lambda: work.calls == 1, 10, "the job started")
        started = time.monotonic()
        await until(lambda: consumer.status.in_flight == 1, 5, "the duplicate settled")
        assert time.monotonic() - started < 4  # the job itself runs 6 s
        result = await asyncio.to_thread(results.wait, job["attachment_id"], 30)
        await until(lambda: consumer.status.in_flight == 0, 10, "the job settled")
    assert result["success"] is True and work.calls == 1
    assert len(results.all(job["attachment_id"])) == 1
