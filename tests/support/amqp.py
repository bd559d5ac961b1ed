"""An outside producer and consumer of the Whisper-Local contract, written with plain pika."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import defaultdict
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from ingest import contract as c


def connect(url: str, attempts: int = 20) -> pika.BlockingConnection:
    # Right after `rabbitmqctl start_app` the listener may still refuse for a moment.
    for attempt in range(attempts):
        try:
            return pika.BlockingConnection(pika.URLParameters(url))
        except pika.exceptions.AMQPConnectionError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def fresh_vhost(vhost: str) -> str:
    """A virtual host of the test's own, with the contract's queues empty; returns its URL."""
    if vhost not in rabbitmqctl("list_vhosts"):
        rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    with connect(url) as conn:
        channel = conn.channel()
        for queue in (c.REQUEST_QUEUE, c.RESULT_QUEUE, c.RETRY_QUEUE, c.REJECTED_QUEUE):
            channel.queue_delete(queue)
        declare_like_a_producer(channel)
    return url


def declare_like_a_producer(channel: BlockingChannel) -> None:
    """What an existing producer/consumer declares; fails if our arguments differ."""
    for exchange in (c.REQUEST_EXCHANGE, c.RESULT_EXCHANGE, c.RETRY_EXCHANGE):
        channel.exchange_declare(exchange, exchange_type="direct", durable=True)
    channel.queue_declare(c.REQUEST_QUEUE, durable=True)
    channel.queue_declare(c.RESULT_QUEUE, durable=True)
    channel.queue_declare(c.RETRY_QUEUE, durable=True, arguments=c.RETRY_QUEUE_ARGUMENTS)
    channel.queue_bind(c.REQUEST_QUEUE, c.REQUEST_EXCHANGE, c.REQUEST_ROUTING_KEY)
    channel.queue_bind(c.RESULT_QUEUE, c.RESULT_EXCHANGE, c.RESULT_ROUTING_KEY)
    channel.queue_bind(c.RETRY_QUEUE, c.RETRY_EXCHANGE, c.RETRY_ROUTING_KEY)


def publish(
    url: str,
    *bodies: dict[str, Any] | bytes,
    headers: dict[str, Any] | None = None,
    priority: int | None = None,
) -> None:
    """Publish requests exactly like the seed's example producer (persistent, direct)."""
    with connect(url) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for body in bodies:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            channel.basic_publish(
                exchange=c.REQUEST_EXCHANGE,
                routing_key=c.REQUEST_ROUTING_KEY,
                body=raw,
                properties=pika.BasicProperties(
                    delivery_mode=2, headers=headers, priority=priority
                ),
            )


def queue_depth(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, from a passive declare."""
    with connect(url) as conn:
        ok = conn.channel().queue_declare(queue, passive=True).method
        return int(ok.message_count), int(ok.consumer_count)


def drain(url: str, queue: str) -> list[tuple[dict[str, Any], bytes]]:
    """Take every ready message off a queue: (headers, body) pairs."""
    out = []
    with connect(url) as conn:
        channel = conn.channel()
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((dict(props.headers or {}), body))


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


def unacked(queue: str, vhost: str = "/") -> int:
    """Messages delivered and not yet acknowledged, as the broker counts them."""
    out = rabbitmqctl("list_queues", "-q", "-p", vhost, "name", "messages_unacknowledged")
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"queue {queue} not found")


class ResultCollector:
    """Reads whisper_results the way the seed's example consumer does, keyed by attachment_id,
    and keeps reading across broker restarts."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._results: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._properties: dict[int, list[pika.BasicProperties]] = defaultdict(list)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("result collector could not connect")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn = connect(self._url)
            except pika.exceptions.AMQPError:
                time.sleep(0.5)
                continue
            try:
                channel = conn.channel()
                declare_like_a_producer(channel)
                channel.basic_consume(c.RESULT_QUEUE, self._on_result, auto_ack=True)
                self._ready.set()
                while not self._stop.is_set():
                    conn.process_data_events(time_limit=0.2)
                conn.close()
            except pika.exceptions.AMQPError:
                time.sleep(0.5)

    def _on_result(self, _ch: Any, _method: Any, props: pika.BasicProperties, body: bytes) -> None:
        result = json.loads(body)
        with self._cond:
            self._results[result["attachment_id"]].append(result)
            self._properties[result["attachment_id"]].append(props)
            self._cond.notify_all()

    def wait(self, attachment_id: int, timeout: float = 90) -> dict[str, Any]:
        """The first result for a job, failing if none arrives in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._results[attachment_id], timeout):
                raise AssertionError(f"no result for attachment {attachment_id} in {timeout}s")
            return self._results[attachment_id][0]

    def all(self, attachment_id: int) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._results[attachment_id])

    def properties(self, attachment_id: int) -> list[pika.BasicProperties]:
        with self._cond:
            return list(self._properties[attachment_id])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
