"""How many Ingest replicas the broker's backlog wants: enough that their prefetch covers the
jobs waiting on RabbitMQ (work and retry queues) and those already held. Plain logic; the
Ray policy that feeds it the replicas' reports is ``serve_app.deployments.autoscaling``, and
Serve holds the result to the configured bounds and delays."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IngestReport:
    """What one Ingest replica reports: the lanes' depth on the broker (the same broker for
    every replica), the deliveries it holds, and how many it may hold (its prefetch)."""

    queue_depth: int
    held: int
    prefetch: int

    def as_metrics(self) -> dict[str, float]:
        return {"queue_depth": self.queue_depth, "held": self.held, "prefetch": self.prefetch}


def replicas_wanted(reports: Mapping[str, Mapping[Any, float]]) -> int | None:
    """From each metric's value per replica (``IngestReport.as_metrics``, as Serve gathers
    them): the replicas whose prefetch covers the depth and what is held; None before any
    replica reported."""
    depths = reports.get("queue_depth", {})
    if not depths:
        return None
    depth = max(depths.values())  # one broker: every replica read the same queues
    held = sum(reports.get("held", {}).values())
    prefetch = max(reports.get("prefetch", {}).values(), default=1.0)
    return max(1, math.ceil((depth + held) / max(prefetch, 1.0)))
