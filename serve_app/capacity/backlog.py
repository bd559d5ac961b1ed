"""The service's backlog as the Gateway sees it: jobs from the store, its own sync requests in
flight, and the pools' measured speed; admission of sync requests and the jobs' estimates
come from one snapshot of them. The store's part is read at most every ``ttl_s`` (a burst of
requests costs the database one read); the requests in flight are this replica's own and
counted afresh in every snapshot, so one that just finished stops counting at once (a cached
count of them refused requests for seconds after a burst had been answered). Plain Python
over the store: no Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any

from serve_app import metrics
from serve_app.capacity.eta import Eta, Pending, backlog_s, retry_after_s, schedule
from serve_app.capacity.fair import ANYONE, Tenant
from serve_app.errors import BacklogFullError
from serve_app.store.backlog import BacklogStore, PoolSpeed
from serve_app.store.rows import now

logger = logging.getLogger(__name__)


@dataclass
class Snapshot:
    at: datetime
    pending: list[Pending]
    pools: dict[str, PoolSpeed]
    taken: float = field(default_factory=time.monotonic)
    # Replicas each pool runs or is starting (Serve's answer to the autoscaling), when known.
    asked: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """What the pools get through per second once the replicas Serve is bringing up run:
        each pool's measured speed per replica times those replicas, the numbers the
        autoscaling drains the backlog by, so an estimate shows a scale-up at once."""
        total = 0.0
        for name, pool in self.pools.items():
            per_replica = pool.rate / pool.replicas if pool.replicas else 0.0
            total += per_replica * max(pool.replicas, self.asked.get(name, 0))
        return total

    @cached_property
    def backlog_s(self) -> float:
        return backlog_s(self.pending)

    @cached_property
    def etas(self) -> dict[str, Eta]:
        return schedule(self.pending, self.rate, self.at)

    def export(self) -> None:
        """As metrics (every Gateway replica sees the same jobs: take the max, not the sum)."""
        metrics.set_gauge("whisper_backlog_audio_seconds", self.backlog_s)
        for name, pool in self.pools.items():
            metrics.set_gauge("whisper_pool_speed", pool.rate, pool=name)

    def summary(self) -> dict[str, Any]:
        """For /health: what waits, and how fast each pool gets through it."""
        return {
            "audio_seconds": round(self.backlog_s, 1),
            "jobs": sum(p.id is not None for p in self.pending),
            # Jobs claimed and started, cluster-wide, by the lane that brought them.
            "running": dict(Counter(p.lane for p in self.pending if p.running and p.lane)),
            "speed": {name: round(p.rate, 2) for name, p in self.pools.items()},
        }


class Backlog:
    def __init__(
        self,
        store: BacklogStore,
        bound_s: float,
        in_flight: Callable[[], list[tuple[float, str]]],
        ttl_s: float = 2.0,
        asked: Callable[[], dict[str, int]] = dict,
        total_bound_s: float = 0.0,
    ) -> None:
        self._store = store
        self.bound_s = bound_s  # of one tenant's audio
        self.total_bound_s = total_bound_s  # of everyone's: the last guard
        self._in_flight = in_flight
        self._asked = asked
        self._ttl_s = ttl_s
        self._last: Snapshot | None = None  # of the store's part only
        self._reading: asyncio.Lock | None = None

    async def snapshot(self, newer_than: float = 0.0) -> Snapshot:
        """This replica's requests in flight now, ahead of the store's jobs and speeds as last
        read; those are read again if older than ``ttl_s`` or than ``newer_than`` (a
        ``time.monotonic()``)."""
        if self._reading is None:  # made here: routes run on the replica's event loop
            self._reading = asyncio.Lock()
        async with self._reading:
            stored = self._last
            if (
                stored is None
                or time.monotonic() - stored.taken > self._ttl_s
                or stored.taken < newer_than
            ):
                jobs, pools = await asyncio.to_thread(self._read)
                stored = self._last = Snapshot(now(), jobs, pools)
        requests = [Pending(remaining_s=s, running=True, tenant=t) for s, t in self._in_flight()]
        asked = self._asked()
        if not requests:
            # Kept while nothing changes, so its estimates are worked out once per read.
            if stored.asked != asked:
                stored = self._last = replace(stored, asked=asked)
            return stored
        return Snapshot(
            now(), requests + stored.pending, stored.pools, taken=stored.taken, asked=asked
        )

    def _read(self) -> tuple[list[Pending], dict[str, PoolSpeed]]:
        return self._store.pending(), self._store.capacity()

    async def read(self, newer_than: float = 0.0) -> Snapshot | None:
        """A snapshot, or None (logged) when the store cannot be read: admission lets
        requests in then, and jobs go without estimates, rather than failing them."""
        try:
            return await self.snapshot(newer_than)
        except Exception as exc:
            logger.warning("Could not read the backlog: %r", exc)
            return None

    async def watch(self, every_s: float = 5.0) -> None:
        """Keep the metrics fresh between requests; runs until cancelled."""
        while True:
            if snap := await self.read():
                snap.export()
            await asyncio.sleep(every_s)

    async def admit(self, tenant: Tenant | None = None) -> None:
        """BacklogFullError (429) when more of ``tenant``'s audio waits than ``bound_s``
        lets in (one key's flood holds back that key, not the others), or more of everyone's
        than ``total_bound_s``."""
        if not self.bound_s and not self.total_bound_s:
            return
        snap = await self.read()
        if snap is None:
            return
        who = (tenant or Tenant()).id
        own = backlog_s([p for p in snap.pending if p.tenant == who])
        if self.bound_s and own > self.bound_s:
            # At the pools' whole speed: a lower bound when other keys' work shares them.
            whose = "The service is" if who == ANYONE else "This API key's work is"
            raise _full(whose, own, self.bound_s, snap.rate)
        if self.total_bound_s and snap.backlog_s > self.total_bound_s:
            raise _full("The service is", snap.backlog_s, self.total_bound_s, snap.rate)

    async def estimates(self, job_ids: list[str]) -> dict[str, Eta]:
        """Of unfinished jobs; one the snapshot misses (submitted since) gets a new one."""
        if not job_ids:
            return {}
        asked = time.monotonic()
        snap = await self.read()
        if snap and snap.rate > 0 and any(job_id not in snap.etas for job_id in job_ids):
            snap = await self.read(newer_than=asked)
        if snap is None:
            return {}
        # Estimated from a snapshot up to ttl_s old: a job due by then is due now, not in
        # the past.
        moment = now()
        return {
            job_id: Eta(max(eta.start, moment), max(eta.completion, moment))
            for job_id in job_ids
            if (eta := snap.etas.get(job_id)) is not None
        }


def _full(whose: str, behind_s: float, bound_s: float, rate: float) -> BacklogFullError:
    wait = retry_after_s(behind_s, bound_s, rate)
    return BacklogFullError(
        f"{whose} {behind_s:.0f} s of audio behind (new requests are taken below "
        f"{bound_s:.0f} s); try again in {wait} s, or submit a job to /v1/jobs, which queues "
        "whatever the backlog",
        wait,
    )
