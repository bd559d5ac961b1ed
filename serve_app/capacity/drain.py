"""How many replicas each model pool wants so that the backlog drains within a deadline.

The backlog is audio seconds (ten 1-hour files are 7,000 times ten 5-second clips, though
both are ten requests), each pool's speed is audio seconds per second of one replica, as the
replicas measure it (``serve_app.capacity.speed``). Pools are filled in their order of
preference (GPU pools first): each takes what its replicas can drain by the deadline, up to
its maximum, and the next pool takes the rest. A pool's minimum always stands. The backlog
the policy acts on rises at once and falls slowly (``Smoothed``), so a pool does not shed
replicas between two bursts. Plain logic; Ray's side is ``serve_app.deployments.autoscaling``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A pool never measured (it has not run yet) is taken to transcribe at this many audio
# seconds per second per unit of its routing weight: real time on a weight-1 CPU replica.
ASSUMED_SPEED_PER_WEIGHT = 1.0


@dataclass(frozen=True)
class PoolView:
    """One model pool as the policy sees it."""

    name: str
    min_replicas: int
    max_replicas: int
    # Audio seconds per second of one replica; None when no replica has measured it yet.
    speed: float | None
    weight: float = 1.0
    # Replicas that count for draining, when fewer than it gets: a pool whose replicas have
    # waited long for a node (a GPU pool with no GPU node) still asks for them (a cluster
    # autoscaler may add the node), but the next pool takes the work meanwhile.
    usable: int | None = None


def assumed_speeds(pools: Sequence[PoolView]) -> dict[str, float]:
    """Each pool's speed per replica: measured, or else scaled by weight from the pools that
    were measured (a GPU pool of weight 8 is taken as 8 times a CPU one), or else real time
    per unit of weight."""
    measured = [p for p in pools if p.speed and p.speed > 0]
    per_weight = (
        sum(p.speed / p.weight for p in measured if p.speed) / len(measured)
        if measured
        else ASSUMED_SPEED_PER_WEIGHT
    )
    return {p.name: p.speed if p.speed and p.speed > 0 else per_weight * p.weight for p in pools}


def drain_targets(backlog_s: float, pools: Sequence[PoolView], drain_s: float) -> dict[str, int]:
    """Replicas per pool to get through ``backlog_s`` audio seconds within ``drain_s``
    seconds, pools filled in the given order; each within its min and max."""
    speeds = assumed_speeds(pools)
    left = max(backlog_s, 0.0)
    targets: dict[str, int] = {}
    for pool in pools:
        per_replica = speeds[pool.name] * max(drain_s, 1e-9)
        wanted = math.ceil(left / per_replica - 1e-9) if left > 0 else 0
        replicas = min(max(wanted, pool.min_replicas), pool.max_replicas)
        targets[pool.name] = replicas
        usable = replicas if pool.usable is None else min(replicas, pool.usable)
        left = max(left - usable * per_replica, 0.0)
    return targets


@dataclass
class Smoothed:
    """A figure that follows a rise at once and a fall with a half-life, so that a backlog
    that empties between two bursts keeps the replicas it had for a while."""

    half_life_s: float
    value: float = 0.0
    at: float | None = None

    def update(self, value: float, now: float) -> float:
        if self.at is None or value >= self.value:
            self.value = value
        else:
            decay = 0.5 ** (max(now - self.at, 0.0) / max(self.half_life_s, 1e-9))
            self.value = value + (self.value - value) * decay
        self.at = now
        return self.value
