"""The AMQP transport: connect (and reconnect), consume, settle every delivery, publish with
confirms. No job logic: a lane handler either returns (the delivery is acked) or raises (it
is handed back and comes again); the consumer module decides what a message means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)

from ingest import contract as c
from ingest import topology
from ingest.depth import QueueDepth, read_depths
from serve_app import metrics

logger = logging.getLogger(__name__)

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]
# A delivery handed back after a failure waits this long first, so an outage of the store or
# a broken route is not a hot loop.
_REQUEUE_PAUSE_S = 1.0


class PublishError(Exception):
    pass


@dataclass
class ConsumerStatus:
    connected: bool = False
    consuming: bool = False
    last_error: str | None = None
    # Deliveries held, by lane (the queue attribute they came from): handled, not yet settled.
    in_flight_by_lane: dict[str, int] = field(default_factory=dict)
    results: int = 0
    retries: int = 0
    parked: int = 0
    since: float = field(default_factory=time.time)
    # Each lane's depth on the broker when last read: {"requests": {"waiting": n, ...}}.
    queues: dict[str, dict[str, int]] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("connected", "consuming"):
            up = self.connected and getattr(self, "consuming", False)
            metrics.set_gauge("whisper_broker_connected", float(up))

    @property
    def in_flight(self) -> int:
        return sum(self.in_flight_by_lane.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "up" if self.connected and self.consuming else "down",
            "in_flight": self.in_flight,
            **self.__dict__,
        }


@dataclass
class TransportConfig:
    url: str
    prefetch: int
    reconnect_max_s: float = 30
    shutdown_grace_s: float = 90
    # A broker under a memory or disk alarm blocks publishers without a word: an HTTP client
    # waiting for its job to be queued gets an answer (503) after this long instead.
    submit_timeout_s: float = 10


class AmqpTransport:
    def __init__(self, config: TransportConfig) -> None:
        self.config = config
        self.status = ConsumerStatus()
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        # Results and retries go out on the confirming channel; requests come in on another.
        self._out: topology.Topology | None = None
        self._consumed: list[tuple[AbstractQueue, str]] = []
        # In-flight deliveries: each handler's task, and the channel its message came on.
        self._tasks: dict[asyncio.Task[None], AbstractIncomingMessage] = {}
        # Deliveries whose channel died: the broker redelivers them, so finishing them too
        # could answer a job twice, and settling them on a reopened channel fails.
        self._abandoned: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @property
    def out(self) -> topology.Topology:
        if self._out is None:
            raise PublishError(self.status.last_error or "not connected to RabbitMQ")
        return self._out

    async def run(self, lanes: Callable[[topology.Topology], dict[str, Handler]]) -> None:
        """Connect (retrying with backoff until the broker answers), consume the queues that
        ``lanes`` names (queue attribute of the topology -> handler) until stop()."""
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self._start(lanes)
                break
            except Exception as exc:  # aio-pika raises several unrelated types on connect
                self.status.last_error = f"{exc.__class__.__name__}: {exc}"
                logger.warning("RabbitMQ not available (%s); retrying in %.0fs", exc, delay)
                await self._close_connection()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, self.config.reconnect_max_s)
        await self._stopping.wait()

    async def _start(self, lanes: Callable[[topology.Topology], dict[str, Handler]]) -> None:
        connection = await aio_pika.connect_robust(self.config.url)
        self._connection = connection
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        consumer_channel = await connection.channel()
        consumer_channel.close_callbacks.add(self._abandon_in_flight)
        # global: RabbitMQ shares the count among every consumer on the channel, so the contract
        # lane and the jobs lane together hold WORKERS_COUNT, not WORKERS_COUNT each.
        await consumer_channel.set_qos(prefetch_count=self.config.prefetch, global_=True)
        foreign = await topology.foreign_queues(self.config.url)
        if foreign:
            logger.info("Using %s as declared already (arguments of their own)", sorted(foreign))
        self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._out = await topology.declare(self._publisher, foreign)
        incoming = await topology.declare(consumer_channel, foreign)
        self._consumed = []
        for name, handler in lanes(incoming).items():
            queue: AbstractQueue = getattr(incoming, name)
            tag = await queue.consume(self._settling(name, handler))
            self._consumed.append((queue, tag))
        self.status.connected = self.status.consuming = True
        self.status.last_error = None
        logger.info(
            "Consuming %s with prefetch %d",
            ", ".join(queue.name for queue, _ in self._consumed),
            self.config.prefetch,
        )

    def _on_connection_lost(self, *_: Any) -> None:
        self.status.connected = False
        if not self._stopping.is_set():
            self.status.last_error = "connection lost; reconnecting"

    def _abandon_in_flight(self, *_: Any) -> None:
        # Only deliveries of a channel that is closed: a close reported late (a robust
        # channel reports one closing more than once) must not stop deliveries of the channel
        # that replaced it, whose messages would then be settled by nobody.
        lost = [task for task, message in self._tasks.items() if _channel_closed(message)]
        if lost:
            logger.warning(
                "Channel lost with %d jobs in flight; the broker will redeliver them", len(lost)
            )
        for task in lost:
            self._abandoned.add(task)
            task.cancel()

    def _on_reconnected(self, *_: Any) -> None:
        self.status.connected = True
        self.status.last_error = None

    async def queue_depths(self) -> dict[str, QueueDepth]:
        """Each lane's depth on the broker now (``ingest.depth``); PublishError when not
        connected."""
        connection = self._connection
        if connection is None or not self.status.connected:
            raise PublishError(self.status.last_error or "not connected to RabbitMQ")
        depths = await read_depths(connection)
        self.status.queues = {
            lane: {"waiting": d.waiting, "retrying": d.retrying} for lane, d in depths.items()
        }
        for lane, depth in depths.items():
            metrics.set_gauge("whisper_amqp_queue_depth", depth.waiting, lane=lane, state="waiting")
            metrics.set_gauge(
                "whisper_amqp_queue_depth", depth.retrying, lane=lane, state="retrying"
            )
        return depths

    async def stop(self) -> None:
        """Stop taking messages, let in-flight jobs finish within the grace period, then hand the
        rest back to the broker (nack with requeue). Never acks an unanswered job."""
        self._stopping.set()
        self.status.consuming = False
        for queue, tag in self._consumed:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # a lost channel has no consumer left to cancel
                logger.warning("Could not cancel consuming %s: %r", queue.name, exc)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.config.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
        await self._close_connection()

    async def _close_connection(self) -> None:
        if self._connection is not None:
            try:
                await self._connection.close()
            except Exception as exc:  # closing a broken connection: nothing left to do
                logger.warning("Could not close the RabbitMQ connection cleanly: %r", exc)
        self._connection = None
        self.status.connected = False

    # --- settling -------------------------------------------------------------------------------

    def _settling(self, lane: str, handler: Handler) -> Handler:
        async def settle(message: AbstractIncomingMessage) -> None:
            await self._settle(message, handler, lane)

        return settle

    async def _settle(self, message: AbstractIncomingMessage, handler: Handler, lane: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = message
        self.status.in_flight_by_lane[lane] = self.status.in_flight_by_lane.get(lane, 0) + 1
        # Every delivery ends acked (its outcome is durable) or nacked (it runs again later);
        # only one whose channel died is left to the broker, which redelivers it.
        try:
            try:
                await handler(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Nothing was answered (a store outage, a publish refused): the delivery comes
                # back and runs again, and its claim keeps that from doing the work twice.
                if isinstance(exc, PublishError):
                    logger.error("Could not publish (%s); requeueing the request", exc)
                else:
                    logger.exception("Delivery %s failed; requeueing it", message.delivery_tag)
                await asyncio.sleep(_REQUEUE_PAUSE_S)
                await _hand_back(message)
                return
            try:
                await message.ack()
            except Exception:
                logger.exception("Could not ack delivery %s", message.delivery_tag)
        except asyncio.CancelledError:
            if task not in self._abandoned:
                logger.info("Shutting down: handing message %s back", message.delivery_tag)
                await _hand_back(message)
            raise
        finally:
            self.status.in_flight_by_lane[lane] -= 1
            self._tasks.pop(task, None)
            self._abandoned.discard(task)

    # --- publishing -----------------------------------------------------------------------------

    async def publish(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str
    ) -> None:
        """Publish and wait for the broker's confirm; PublishError otherwise (unroutable too)."""
        try:
            await exchange.publish(message, routing_key=routing_key, mandatory=True)
        except Exception as exc:
            raise PublishError(f"{exc.__class__.__name__}: {exc}") from exc

    async def park(self, message: AbstractIncomingMessage, reason: str) -> None:
        """A message nobody can answer goes to the rejected queue, with why."""
        logger.warning("Parking message %s in %s: %s", message.message_id, c.REJECTED_QUEUE, reason)
        headers = dict(message.headers or {})
        kept = {k: v for k, v in headers.items() if k not in c.DEATH_HEADERS}
        parked = aio_pika.Message(
            body=message.body,
            headers={
                **kept,
                c.REJECT_REASON_HEADER: reason,
                "x-original-routing-key": message.routing_key or "",
            },
            content_type=message.content_type,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
        )
        if self._publisher is None:
            raise PublishError("not connected to RabbitMQ")
        await self.publish(self._publisher.default_exchange, parked, c.REJECTED_QUEUE)
        self.status.parked += 1
        metrics.inc("whisper_parked_messages_total")


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    channel = getattr(message, "channel", None)
    closed = getattr(channel, "is_closed", None)
    return closed if isinstance(closed, bool) else True  # unknown: as before, abandon it


async def _hand_back(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception:  # the channel is gone: the broker redelivers the message anyway
        logger.exception("Could not hand delivery %s back", message.delivery_tag)
