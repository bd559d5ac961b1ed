"""Declaring the contract's exchanges and queues, exactly as the seed's table has them.

A work queue that already exists with arguments of a producer's own (``x-max-priority``: the
broker then hands out higher-priority messages first) is used as it is, not declared again:
declaring it with the contract's arguments would fail (PRECONDITION_FAILED) and stop the lane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aio_pika.exceptions import ChannelPreconditionFailed

from ingest import contract as c

DIRECT = aio_pika.ExchangeType.DIRECT


@dataclass
class Topology:
    requests: AbstractQueue
    results: AbstractExchange
    retries: AbstractExchange
    jobs: AbstractQueue
    job_exchange: AbstractExchange
    job_retries: AbstractExchange


async def foreign_queues(url: str) -> set[str]:
    """The lanes' work queues declared already with other arguments than the contract's,
    probed on a connection of their own (a failed declare closes its channel)."""
    foreign = set()
    async with await aio_pika.connect(url) as connection:
        for name in (c.REQUEST_QUEUE, c.JOB_QUEUE):
            probe = await connection.channel()
            try:
                await probe.declare_queue(name, durable=True)
            except ChannelPreconditionFailed:
                foreign.add(name)
            finally:
                if not probe.is_closed:
                    await probe.close()
    return foreign


async def declare(channel: AbstractChannel, foreign: set[str] | None = None) -> Topology:
    """``foreign``: the work queues to use as they are (``foreign_queues``)."""
    foreign = foreign or set()
    requests, _, retries = await _lane(
        channel,
        (c.REQUEST_EXCHANGE, c.REQUEST_QUEUE, c.REQUEST_ROUTING_KEY),
        (c.RETRY_EXCHANGE, c.RETRY_QUEUE, c.RETRY_ROUTING_KEY),
        c.RETRY_QUEUE_ARGUMENTS,
        c.REQUEST_QUEUE in foreign,
    )
    results = await channel.declare_exchange(c.RESULT_EXCHANGE, DIRECT, durable=True)
    result_queue = await channel.declare_queue(c.RESULT_QUEUE, durable=True)
    await result_queue.bind(results, c.RESULT_ROUTING_KEY)
    await channel.declare_queue(c.REJECTED_QUEUE, durable=True)
    # The service's own lane for HTTP jobs, built the same way.
    jobs, job_exchange, job_retries = await _lane(
        channel,
        (c.JOB_EXCHANGE, c.JOB_QUEUE, c.JOB_ROUTING_KEY),
        (c.JOB_RETRY_EXCHANGE, c.JOB_RETRY_QUEUE, c.JOB_RETRY_ROUTING_KEY),
        c.JOB_RETRY_QUEUE_ARGUMENTS,
        c.JOB_QUEUE in foreign,
    )
    return Topology(
        requests=requests,
        results=results,
        retries=retries,
        jobs=jobs,
        job_exchange=job_exchange,
        job_retries=job_retries,
    )


async def _lane(
    channel: AbstractChannel,
    main: tuple[str, str, str],
    retry: tuple[str, str, str],
    retry_arguments: dict[str, Any],
    as_it_is: bool = False,
) -> tuple[AbstractQueue, AbstractExchange, AbstractExchange]:
    """A durable work queue, and a TTL queue that dead-letters retries back into it."""
    exchange = await channel.declare_exchange(main[0], DIRECT, durable=True)
    queue = await channel.declare_queue(main[1], durable=True, passive=as_it_is)
    await queue.bind(exchange, main[2])
    retry_exchange = await channel.declare_exchange(retry[0], DIRECT, durable=True)
    retry_queue = await channel.declare_queue(retry[1], durable=True, arguments=retry_arguments)
    await retry_queue.bind(retry_exchange, retry[2])
    return queue, exchange, retry_exchange
