"""Choosing a replica pool (CPU, GPU, ...) for each request: plain logic, no Ray.

The policy, in order:
1. Pools with running replicas serve; each request goes to the one with the least in-flight
   work per unit of weight (a GPU pool of weight 8 takes 8 requests for each one a CPU pool
   of weight 1 takes, and wins ties when listed first: it is preferred).
2. A pool scaled to zero (asleep) is woken, without making anyone wait for it, once every
   serving pool has ``busy_per_replica`` requests in flight per running replica, or when no
   pool serves at all: the burst keeps going to the serving pools while the sleeper starts,
   and it takes its share once it runs. Queued jobs (``one_wake_at_a_time``) wake a pool
   only while none serves, the first sleeper in order of preference, and the next one only
   once no pool is starting a replica it can place, ``wake_every_s`` later at the earliest:
   the drain policy (``serve_app.capacity.drain``) sizes the pools on the backlog's audio,
   so a wake is only a nudge. Waking on busy pools, or every pool at once, started a CPU
   replica for work the GPU pool was taking by the deadline.
3. With no pool serving (all asleep, or down: replicas lost with their node, or unplaceable),
   ``pick`` raises ``NoReplicaError``: callers that can wait (queued jobs) wait until some
   pool serves, then take it, whichever comes back first; callers that cannot (an HTTP client
   holding a connection) wait a bounded time while a pool is starting (``starting``), and
   otherwise answer 503 with Retry-After. A pool whose replicas Serve says it cannot place
   (no node offers their resources) is not starting. Nothing is queued on a pool that may
   never start (a GPU pool with no GPU node to go to).
4. Ready (``would_serve``) means a request would be served now: some pool has a replica
   running. A pool settled at zero does not count (a request would wake it, not be served).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from serve_app.errors import NoReplicaError

T = TypeVar("T")


class PoolState(Enum):
    UNKNOWN = "unknown"  # not seen yet: treated as serving, so a new app takes work at once
    RUNNING = "running"
    ASLEEP = "asleep"  # scaled to zero on purpose: a request starts a replica
    DOWN = "down"  # should have replicas and has none running (starting, or its node died)


SERVING = (PoolState.RUNNING, PoolState.UNKNOWN)
# Serve's deployment statuses while replicas come up, and the words of its status message
# for replicas that have waited 30 s for a node with room.
STARTING_STATUSES = ("UPDATING", "UPSCALING")
UNPLACEABLE = "to be scheduled"


@dataclass
class Pool(Generic[T]):
    name: str
    target: T
    # Relative throughput, see the module's policy.
    weight: float = 1.0
    in_flight: int = field(default=0, init=False)
    state: PoolState = field(default=PoolState.UNKNOWN, init=False)
    running: int = field(default=0, init=False)
    woken_at: float = field(default=float("-inf"), init=False)
    # Replicas asked for and none running yet, none of them known to be unplaceable.
    starting: bool = field(default=False, init=False)
    # Replicas running or starting: what Serve is bringing the pool to.
    asked: int = field(default=0, init=False)

    @property
    def load(self) -> float:
        return self.in_flight / self.weight

    def observe(
        self, status: str | None, running: int, message: str = "", asked: int | None = None
    ) -> None:
        """What Serve says of the pool's deployment: its status, running replicas, status
        message (which says when replicas wait for resources no node has) and the replicas
        running or starting."""
        self.running = running
        self.asked = running if asked is None else max(asked, running)
        if running > 0:
            self.state = PoolState.RUNNING
        elif status == "HEALTHY":  # settled at zero replicas: its autoscaling target is 0
            self.state = PoolState.ASLEEP
        else:
            self.state = PoolState.DOWN
        self.starting = running == 0 and status in STARTING_STATUSES and UNPLACEABLE not in message


class PoolRouter(Generic[T]):
    def __init__(
        self,
        pools: list[Pool[T]],
        busy_per_replica: int = 2,
        wake_every_s: float = 30.0,
        one_wake_at_a_time: bool = False,
    ) -> None:
        if not pools:
            raise ValueError("at least one pool is needed")
        self.pools = pools
        self._busy_per_replica = busy_per_replica
        self._wake_every_s = wake_every_s
        self._one_wake_at_a_time = one_wake_at_a_time

    def pick(self) -> Pool[T]:
        """The serving pool to send a request to; NoReplicaError when none serves."""
        serving = [p for p in self.pools if p.state in SERVING]
        if not serving:
            raise self.no_replica()
        # min() keeps the first of equals: pools listed first win ties.
        return min(serving, key=lambda p: p.load)

    @staticmethod
    def no_replica() -> NoReplicaError:
        return NoReplicaError(
            "No model replica is running (the model pools are starting, or their nodes are "
            "down); try again later",
            retry_after_s=15,
        )

    def observe(self, states: dict[str, tuple[str | None, int, str, int]]) -> None:
        """One look at every pool: name -> (deployment status, running replicas, message,
        replicas running or starting)."""
        for pool in self.pools:
            pool.observe(*states.get(pool.name, (None, 0, "", 0)))

    def settled(self) -> bool:
        """Some pool serves, and no pool is changing: each runs all it asked for, or sleeps.
        Until Serve changes something (the drain policy, a node lost) the view stays true."""
        return any(p.state is PoolState.RUNNING for p in self.pools) and all(
            p.state in (PoolState.RUNNING, PoolState.ASLEEP) and p.asked == p.running
            for p in self.pools
        )

    def starting(self) -> bool:
        """Some pool is bringing up a replica it can place: worth a bounded wait."""
        return any(p.starting for p in self.pools)

    def to_wake(self, now: float | None = None) -> list[Pool[T]]:
        """Sleeping pools to start now because every serving pool is busy; each is returned
        at most once per ``wake_every_s`` (a start takes that long to show), and with
        ``one_wake_at_a_time`` only the first while none serves, when no pool is starting
        and the last wake is that long ago."""
        now = time.monotonic() if now is None else now
        serving = [p for p in self.pools if p.state in SERVING]
        if any(p.in_flight < max(p.running, 1) * self._busy_per_replica for p in serving):
            return []
        if self._one_wake_at_a_time and (
            serving or any(p.starting or now - p.woken_at < self._wake_every_s for p in self.pools)
        ):
            return []
        waking = [
            p
            for p in self.pools
            if p.state is PoolState.ASLEEP and now - p.woken_at >= self._wake_every_s
        ][: 1 if self._one_wake_at_a_time else None]
        for pool in waking:
            pool.woken_at = now
        return waking

    @contextmanager
    def hold(self, pool: Pool[T]) -> Iterator[Pool[T]]:
        """Count a request in flight on ``pool`` while it runs."""
        pool.in_flight += 1
        try:
            yield pool
        finally:
            pool.in_flight -= 1

    @contextmanager
    def lease(self) -> Iterator[Pool[T]]:
        with self.hold(self.pick()) as pool:
            yield pool


def would_serve(replicas_by_pool: dict[str, dict[str, int]]) -> bool:
    """Ready: a request sent now would be served, so some pool has a replica running (each
    pool's replica counts by state, as ``serve.status()`` gives them)."""
    return any(states.get("RUNNING", 0) > 0 for states in replicas_by_pool.values())
