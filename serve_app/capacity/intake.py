"""What the Ingest replicas report to Serve's autoscaling, and how many Ingest replicas the
broker's backlog wants: enough that their prefetch covers the jobs waiting on RabbitMQ (work
and retry queues) and those already held. Their reports also carry what the model pools
scale on (``serve_app.capacity.drain``): the backlog in audio seconds, the drain deadline and
the pools in order of preference, since the Ingest is the one deployment that sees the store,
the broker and the pools together. Plain logic; the Ray policy that reads the reports is
``serve_app.deployments.autoscaling``, and Serve holds its results to the configured bounds
and delays."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serve_app.capacity.eta import Pending, backlog_s

# Metric names in the reports (Serve gathers each one per replica).
QUEUE_DEPTH = "queue_depth"
HELD = "held"
PREFETCH = "prefetch"
BACKLOG_S = "backlog_audio_s"
DRAIN_S = "drain_s"
_POOL = "pool:"  # "pool:<rank>:<name>" -> the pool's routing weight


@dataclass(frozen=True)
class IngestReport:
    """What one Ingest replica reports: the lanes' depth on the broker (the same broker for
    every replica), the deliveries it holds, how many it may hold (its prefetch), and for the
    pools: the backlog's audio seconds (None before it was read), the drain deadline, and the
    pools by preference (name, weight)."""

    queue_depth: int
    held: int
    prefetch: int
    backlog_s: float | None = None
    drain_s: float = 600.0
    pools: Sequence[tuple[str, float]] = field(default_factory=tuple)

    def as_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {
            QUEUE_DEPTH: self.queue_depth,
            HELD: self.held,
            PREFETCH: self.prefetch,
        }
        if self.backlog_s is not None:
            out[BACKLOG_S] = self.backlog_s
            out[DRAIN_S] = self.drain_s
            out |= {f"{_POOL}{rank}:{name}": w for rank, (name, w) in enumerate(self.pools)}
        return out


@dataclass(frozen=True)
class PoolDemand:
    """What the model pools' policy needs from the Ingest's reports."""

    backlog_s: float
    drain_s: float
    pools: list[tuple[str, float]]  # by preference: (deployment name, weight)


def replicas_wanted(reports: Mapping[str, Mapping[Any, float]]) -> int | None:
    """From each metric's value per replica (``IngestReport.as_metrics``, as Serve gathers
    them): the replicas whose prefetch covers the depth and what is held; None before any
    replica reported."""
    depths = reports.get(QUEUE_DEPTH, {})
    if not depths:
        return None
    depth = max(depths.values())  # one broker: every replica read the same queues
    held = sum(reports.get(HELD, {}).values())
    prefetch = max(reports.get(PREFETCH, {}).values(), default=1.0)
    return max(1, math.ceil((depth + held) / max(prefetch, 1.0)))


def pool_demand(reports: Mapping[str, Mapping[Any, float]]) -> PoolDemand | None:
    """The backlog, deadline and pools as the Ingest replicas last reported them (the
    largest backlog of theirs: each read the same store at a slightly different time);
    None before any replica read the backlog."""
    backlogs = reports.get(BACKLOG_S, {})
    if not backlogs:
        return None
    ranked: list[tuple[int, str, float]] = []
    for metric, values in reports.items():
        if metric.startswith(_POOL) and values:
            rank, _, name = metric.removeprefix(_POOL).partition(":")
            ranked.append((int(rank), name, max(values.values())))
    return PoolDemand(
        backlog_s=max(backlogs.values()),
        drain_s=max(reports.get(DRAIN_S, {}).values(), default=600.0),
        pools=[(name, weight) for _, name, weight in sorted(ranked)],
    )


def queued_audio_s(pending: Sequence[Pending], waiting_on_broker: int, typical_s: float) -> float:
    """The backlog in audio seconds: what the store's jobs have left, and the Whisper-Local
    requests still on the broker (not in the store before a delivery) as typical jobs. A
    request back from its retry queue is in both while it waits: the figure errs high."""
    return backlog_s(list(pending)) + max(waiting_on_broker, 0) * typical_s
