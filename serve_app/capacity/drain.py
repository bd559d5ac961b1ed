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

# The metric a model replica reports its measured speed under (record_autoscaling_stats).
SPEED = "speed"
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


def drain_targets(
    backlog_s: float, pools: Sequence[PoolView], drain_s: float, share: float = 0.0
) -> dict[str, int]:
    """Replicas per pool to get through ``backlog_s`` audio seconds within ``drain_s``
    seconds, pools filled in the given order; each within its min and max. A replica is
    wanted for more than ``share`` of its work (0: any audio at all wakes one)."""
    speeds = assumed_speeds(pools)
    left = max(backlog_s, 0.0)
    targets: dict[str, int] = {}
    for pool in pools:
        per_replica = speeds[pool.name] * max(drain_s, 1e-9)
        wanted = max(math.ceil(left / per_replica - share - 1e-9), 0) if left > 0 else 0
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


# A pool whose replicas have waited this long for a node counts only those running.
PLACEMENT_GRACE_S = 120.0
# How slowly the backlog that holds replicas falls once the work is done: a lull is short
# against the deadline, so the half-life is at most a quarter of it.
BACKLOG_HALF_LIFE_S = 30.0
# A replica is held while the fading backlog still needs at least this share of its work:
# with any share at all, a pool at zero when idle would keep its last replica for many
# half-lives after the work is done.
HELD_SHARE = 0.5


@dataclass(frozen=True)
class PoolSeen:
    """One model pool at one look of the autoscaler (Serve's context, made plain)."""

    name: str
    weight: float
    min_replicas: int
    max_replicas: int
    target: int  # replicas Serve is asked for now
    running: int
    speeds: list[float]  # each running replica's measured speed, as it reported it
    by_requests: float  # what Serve's own policy wants from the requests in flight


def plan_pools(
    backlog_s: float,
    drain_s: float,
    seen: Sequence[PoolSeen],
    states: dict[str, dict[str, float]],
    now: float,
) -> dict[str, int]:
    """Replicas per pool: enough to drain the backlog by the deadline, and never fewer than
    the requests in flight want (an HTTP client waiting on a connection counts as much as
    before). The smoothed backlog only holds replicas a pool has (so they outlast a lull
    between bursts); it never asks for more (a spike, such as undecoded jobs counted as
    typical ones for a second, is Serve's upscale delay's to ignore). ``states`` is each
    pool's memory between looks (its last measured speed, since when it has been short of
    replicas, the smoothed backlog); updated here."""
    views = []
    for pool in seen:
        state = states.setdefault(pool.name, {})
        measured = [s for s in pool.speeds if s > 0]
        if measured:  # a pool scaled to zero keeps the speed it had
            state["speed"] = sum(measured) / len(measured)
        usable = None
        if pool.running < pool.target:
            state.setdefault("short_since", now)
            if now - state["short_since"] >= PLACEMENT_GRACE_S:
                usable = pool.running
        else:
            state.pop("short_since", None)
        views.append(
            PoolView(
                pool.name,
                pool.min_replicas,
                pool.max_replicas,
                state.get("speed"),
                pool.weight,
                usable,
            )
        )
    first = states.setdefault(seen[0].name, {}) if seen else {}
    half_life = min(BACKLOG_HALF_LIFE_S, drain_s / 4)
    smoothed = Smoothed(half_life, first.get("backlog", 0.0), first.get("backlog_at"))
    backlog = smoothed.update(backlog_s, now)
    first["backlog"], first["backlog_at"] = backlog, now
    now_wanted = drain_targets(backlog_s, views, drain_s)
    held = drain_targets(backlog, views, drain_s, share=HELD_SHARE)
    return {
        pool.name: min(
            max(
                now_wanted[pool.name],
                min(held[pool.name], pool.target),
                math.ceil(pool.by_requests),
            ),
            pool.max_replicas,
        )
        for pool in seen
    }
