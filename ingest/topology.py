"""Declaring the contract's exchanges and queues, exactly as the seed's table has them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

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


async def declare(channel: AbstractChannel) -> Topology:
    requests, _, retries = await _lane(
        channel,
        (c.REQUEST_EXCHANGE, c.REQUEST_QUEUE, c.REQUEST_ROUTING_KEY),
        (c.RETRY_EXCHANGE, c.RETRY_QUEUE, c.RETRY_ROUTING_KEY),
        c.RETRY_QUEUE_ARGUMENTS,
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
) -> tuple[AbstractQueue, AbstractExchange, AbstractExchange]:
    """A durable work queue, and a TTL queue that dead-letters retries back into it."""
    exchange = await channel.declare_exchange(main[0], DIRECT, durable=True)
    queue = await channel.declare_queue(main[1], durable=True)
    await queue.bind(exchange, main[2])
    retry_exchange = await channel.declare_exchange(retry[0], DIRECT, durable=True)
    retry_queue = await channel.declare_queue(retry[1], durable=True, arguments=retry_arguments)
    await retry_queue.bind(retry_exchange, retry[2])
    return queue, exchange, retry_exchange
