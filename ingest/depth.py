"""How much waits on the broker: each lane's work queue (ready messages) and its retry queue
(messages waiting out their TTL), read with a passive declare, so RabbitMQ's management plugin
is not needed. What the Ingest scales on and what /health and the metrics show."""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika.abc import AbstractConnection

from ingest import contract as c

# lane -> (work queue, retry queue)
LANES = {
    "requests": (c.REQUEST_QUEUE, c.RETRY_QUEUE),
    "jobs": (c.JOB_QUEUE, c.JOB_RETRY_QUEUE),
}


@dataclass(frozen=True)
class QueueDepth:
    waiting: int  # ready in the work queue, not yet delivered to any consumer
    retrying: int  # in the retry queue, back in the work queue once their TTL passes

    @property
    def total(self) -> int:
        return self.waiting + self.retrying


async def read_depths(connection: AbstractConnection) -> dict[str, QueueDepth]:
    """Each lane's depth. A channel of its own: a passive declare of a queue that is gone
    closes its channel, which must not be one that consumes or publishes."""
    channel = await connection.channel()
    try:
        depths: dict[str, QueueDepth] = {}
        for lane, (work, retry) in LANES.items():
            counts = []
            for name in (work, retry):
                queue = await channel.declare_queue(name, passive=True)
                counts.append(queue.declaration_result.message_count or 0)
            depths[lane] = QueueDepth(*counts)
        return depths
    finally:
        if not channel.is_closed:
            await channel.close()
