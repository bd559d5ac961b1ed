"""Declaring the contract's exchanges and queues, exactly as the seed's table has them."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from ingest import contract as c


@dataclass
class Topology:
    requests: AbstractQueue
    results: AbstractExchange
    retries: AbstractExchange


async def declare(channel: AbstractChannel) -> Topology:
    direct = aio_pika.ExchangeType.DIRECT
    request_exchange = await channel.declare_exchange(c.REQUEST_EXCHANGE, direct, durable=True)
    requests = await channel.declare_queue(c.REQUEST_QUEUE, durable=True)
    await requests.bind(request_exchange, c.REQUEST_ROUTING_KEY)

    results = await channel.declare_exchange(c.RESULT_EXCHANGE, direct, durable=True)
    result_queue = await channel.declare_queue(c.RESULT_QUEUE, durable=True)
    await result_queue.bind(results, c.RESULT_ROUTING_KEY)

    retries = await channel.declare_exchange(c.RETRY_EXCHANGE, direct, durable=True)
    retry_queue = await channel.declare_queue(
        c.RETRY_QUEUE, durable=True, arguments=c.RETRY_QUEUE_ARGUMENTS
    )
    await retry_queue.bind(retries, c.RETRY_ROUTING_KEY)

    await channel.declare_queue(c.REJECTED_QUEUE, durable=True)
    return Topology(requests=requests, results=results, retries=retries)
