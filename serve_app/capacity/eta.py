"""When queued work should start and finish, from the backlog and the measured speed.

The model: the pools together get through ``rate`` audio seconds per second, shared evenly by
the jobs running (units of long files spread over replicas, short ones batch together, so a
job's own speed is its share of the whole). Jobs run in their queue order, as many at once as
run now: a job waits in the queue only while every job slot is taken, so the running count is
the slot count. Requests in flight that are not jobs (the sync route's) share the rate
but hold no slot. Plain logic, no clock of its own: callers pass ``now``.
"""

from __future__ import annotations

import math
from collections import deque
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
    the real one."""
    if rate <= 0:
        return {}
    running = [p for p in pending if p.running]
    queue = deque(p for p in pending if not p.running)
    # Requests in flight (no id) take a share of the rate but no job slot.
    slots = max(sum(p.id is not None for p in running), 1)
    active: list[tuple[Pending, float]] = [(p, max(p.remaining_s, 0.0)) for p in running]
    starts = {id(p): 0.0 for p in running}
    etas: dict[str, Eta] = {}
    elapsed = 0.0
    while active or queue:
        while queue and sum(job.id is not None for job, _ in active) < slots:
            job = queue.popleft()
            starts[id(job)] = elapsed
            active.append((job, max(job.remaining_s, 0.0)))
        share = rate / len(active)
        step = min(left for _, left in active) / share
        elapsed += step
        still: list[tuple[Pending, float]] = []
        for job, left in active:
            left -= step * share
            if left > 1e-9:
                still.append((job, left))
            elif job.id is not None:
                etas[job.id] = Eta(
                    now + timedelta(seconds=starts[id(job)]), now + timedelta(seconds=elapsed)
                )
        active = still
    return etas


def retry_after_s(backlog: float, bound: float, rate: float | None, fallback_s: int = 15) -> int:
    """Seconds until the backlog is back under the bound at the measured rate."""
    if not rate or rate <= 0:
        return fallback_s
    return max(1, math.ceil((backlog - bound) / rate))
