"""Choosing a replica pool (CPU, GPU, ...) for each request: plain logic, no Ray."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Pool(Generic[T]):
    name: str
    target: T
    # Relative throughput: a GPU pool with weight 8 takes 8 requests for each one a CPU pool
    # with weight 1 takes, as long as both have work in flight.
    weight: float = 1.0
    in_flight: int = field(default=0, init=False)


class PoolRouter(Generic[T]):
    """Sends each request to the pool with the least in-flight work per unit of weight."""

    def __init__(self, pools: list[Pool[T]]) -> None:
        if not pools:
            raise ValueError("at least one pool is needed")
        self.pools = pools

    def pick(self) -> Pool[T]:
        # min() keeps the first of equals: pools listed first win ties.
        return min(self.pools, key=lambda pool: pool.in_flight / pool.weight)

    @contextmanager
    def lease(self) -> Iterator[Pool[T]]:
        pool = self.pick()
        pool.in_flight += 1
        try:
            yield pool
        finally:
            pool.in_flight -= 1
