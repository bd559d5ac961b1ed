"""RabbitMQ priority where the contract allows it, against the real broker in a virtual host
of its own: a producer's x-max-priority queue is used as it is, and retries keep priority."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest import contract as c
from serve_app.errors import InferenceError
from serve_app.schemas import QueuedTranscriptionRequest, Transcript
from serve_app.store import ResultLedger, open_engine
from tests.support import amqp, consumers
from tests.support.waiting import until


def _request(attachment_id: int, path: str) -> dict[str, object]:
    return {"attachment_id": attachment_id, "audio_file_path": path, "language": ""}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[ResultLedger]:
    engine = open_engine(f"sqlite:///{tmp_path / 'data' / 'whisper.db'}")
    yield ResultLedger(engine)
    engine.dispose()


async def test_a_producers_priority_queue_is_used_as_it_is_and_priorities_are_kept(
    ledger: ResultLedger,
) -> None:
    """A producer that declared whisper_transcriptions with x-max-priority keeps it: the
    consumer uses the queue as it is (declaring it with the contract's arguments would fail),
    RabbitMQ hands the urgent request out first, and its retry keeps its priority."""
    vhost = "whisper_priority_test"
    url = amqp.fresh_vhost(vhost)
    with amqp.connect(url) as conn:
        channel = conn.channel()
        channel.queue_delete(c.REQUEST_QUEUE)
        channel.queue_declare(c.REQUEST_QUEUE, durable=True, arguments={"x-max-priority": 10})
        channel.queue_bind(c.REQUEST_QUEUE, c.REQUEST_EXCHANGE, c.REQUEST_ROUTING_KEY)
    routine = [
        {"attachment_id": n, "audio_file_path": "/tmp/shared_audio/routine.mp3"}
        for n in range(1, 4)
    ]
    urgent = {
        "attachment_id": 4,
        "audio_file_path": "/tmp/shared_audio/urgent.mp3",
    }  # the stand-in sees paths, not ids
    order: list[str] = []

    async def note(request: QueuedTranscriptionRequest) -> Transcript:
        order.append(Path(request.audio_file_path).stem)
        if order == ["urgent"]:
            raise InferenceError("once")  # its retry goes round the TTL queue
        return Transcript(
            text="ok", language="en", language_probability=1, duration=1, segments=[], model="m"
        )

    amqp.publish(url, *routine)
    amqp.publish(url, urgent, priority=9)
    retry_priority = None
    try:
        async with consumers.Running(url, note, ledger, prefetch=1):
            await until(lambda: amqp.queue_depth(url, c.RETRY_QUEUE)[0] == 1, 4, "the retry")
            with amqp.connect(url) as conn:  # a look at it within its 5 s TTL
                channel = conn.channel()
                method, properties, _ = channel.basic_get(c.RETRY_QUEUE)
                retry_priority = properties.priority
                channel.basic_reject(method.delivery_tag, requeue=True)
            await until(lambda: len(order) == 5, 60, "every request, and the urgent one again")
        listing = amqp.rabbitmqctl(
            "list_queues", "-p", vhost, "name", "arguments", "--formatter", "json"
        )
    finally:
        with amqp.connect(url) as conn:
            conn.channel().queue_delete(c.REQUEST_QUEUE)  # back to the contract's declaration
    assert order[0] == "urgent", order  # first, though published last
    assert order.count("urgent") == 2 and retry_priority == 9
    arguments = {q["name"]: q["arguments"] for q in json.loads(listing)}[c.REQUEST_QUEUE]
    assert "x-max-priority" in json.dumps(arguments)  # still the producer's queue
