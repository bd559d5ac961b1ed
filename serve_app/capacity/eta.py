"""When queued work should start and finish, from the backlog and the measured speed.

The model: the pools together get through ``rate`` audio seconds per second, shared evenly by
the tenants with work running, then by each tenant's jobs (units of long files spread over
replicas, short ones batch together, so a job's own speed is its share of the whole). As many
jobs run at once as run now: a job waits in the queue only while every job slot is taken, so
the running count is the slot count; a free slot goes to the tenant running fewest, each
tenant's jobs in their queue order. Requests in flight that are not jobs (the sync route's)
share the rate but hold no slot. Plain logic, no clock of its own: callers pass ``now``.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from serve_app.capacity.fair import ANYONE


@dataclass(frozen=True)
class Pending:
    """Work not done yet: a job (``id``) or a request in flight (no id)."""

    remaining_s: float  # audio seconds still to transcribe
    running: bool
    id: str | None = None
    lane: str | None = None  # a job's: "amqp" (Whisper-Local requests) or "http" (async jobs)
    tenant: str = ANYONE  # whose work it is (serve_app.capacity.fair)


@dataclass(frozen=True)
class Eta:
    start: datetime
    completion: datetime


def backlog_s(pending: list[Pending]) -> float:
    return sum(max(p.remaining_s, 0.0) for p in pending)


def schedule(pending: list[Pending], rate: float, now: datetime) -> dict[str, Eta]:
    """Estimates for each job with an id, by ``pending``'s order (running ones first, then the
    queue); empty when the rate is unknown. A running job's start is ``now``: the caller keeps
    the real one.

    As the service shares its work between tenants (``serve_app.capacity.fair``): a free slot
    goes to the tenant with a job queued and the fewest running (ties: whose job has waited
    longest), and the rate is shared evenly by the tenants with work running, then by each
    tenant's jobs. With one tenant: the queue in order, the rate shared by the jobs."""
    if rate <= 0:
        return {}
    running = [p for p in pending if p.running]
    queue = _Queue([p for p in pending if not p.running])
    # Requests in flight (no id) take a share of the rate but no job slot.
    slots = max(sum(p.id is not None for p in running), 1)
    active: list[tuple[Pending, float]] = [(p, max(p.remaining_s, 0.0)) for p in running]
    starts = {id(p): 0.0 for p in running}
    etas: dict[str, Eta] = {}
    elapsed = 0.0
    while active or queue:
        while queue and sum(job.id is not None for job, _ in active) < slots:
            job = queue.take(Counter(job.tenant for job, _ in active if job.id is not None))
            starts[id(job)] = elapsed
            active.append((job, max(job.remaining_s, 0.0)))
        per_tenant = Counter(job.tenant for job, _ in active)
        shares = [rate / len(per_tenant) / per_tenant[job.tenant] for job, _ in active]
        step = min(left / share for (_, left), share in zip(active, shares, strict=True))
        elapsed += step
        still: list[tuple[Pending, float]] = []
        for (job, left), share in zip(active, shares, strict=True):
            left -= step * share
            if left > 1e-9:
                still.append((job, left))
            elif job.id is not None:
                etas[job.id] = Eta(
                    now + timedelta(seconds=starts[id(job)]), now + timedelta(seconds=elapsed)
                )
        active = still
    return etas


class _Queue:
    """Queued jobs by tenant, each tenant's in order."""

    def __init__(self, jobs: list[Pending]) -> None:
        self._by_tenant: dict[str, deque[tuple[int, Pending]]] = {}
        for n, job in enumerate(jobs):
            self._by_tenant.setdefault(job.tenant, deque()).append((n, job))

    def __bool__(self) -> bool:
        return bool(self._by_tenant)

    def take(self, running: Counter[str]) -> Pending:
        """The job a free slot goes to: the oldest of the tenant with the fewest jobs running
        (``capacity.fair.yield_to``); on a tie, the one that has waited longest."""
        tenant = min(self._by_tenant, key=lambda t: (running[t], self._by_tenant[t][0][0]))
        _, job = self._by_tenant[tenant].popleft()
        if not self._by_tenant[tenant]:
            del self._by_tenant[tenant]
        return job


def retry_after_s(backlog: float, bound: float, rate: float | None, fallback_s: int = 15) -> int:
    """Seconds until the backlog is back under the bound at the measured rate."""
    if not rate or rate <= 0:
        return fallback_s
    return max(1, math.ceil((backlog - bound) / rate))
