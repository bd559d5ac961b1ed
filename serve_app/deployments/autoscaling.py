"""Serve's autoscaling for the whole application, one policy for every deployment
(``applications[].autoscaling_policy.policy_function`` in the YAML): Ray 2.60 (pinned) calls
an application-level policy with every autoscaled deployment's context at once, which is
what filling the pools in order needs (the CPU pool takes what the GPU pool cannot), and
applies each deployment's bounds and delays to its answer. Ray's side only; the arithmetic is
plain Python in ``serve_app.capacity``:

- the Ingest: replicas whose prefetch covers the queues' depth (``capacity.intake``);
- the model pools: replicas that drain the backlog's audio seconds by the deadline, pools
  filled by preference, never fewer than their requests in flight want (``capacity.drain``);
- anything else (the Diarizer): Serve's own policy, on requests in flight.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

from serve_app.capacity.drain import SPEED, PoolSeen, plan_pools
from serve_app.capacity.intake import pool_demand, replicas_wanted

if TYPE_CHECKING:
    from ray.serve._private.common import DeploymentID

INGEST = "Ingest"

Decisions = dict["DeploymentID", float]
States = dict["DeploymentID", dict[str, Any]]


def ingest_by_queue_depth(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """The Ingest replicas whose prefetch covers the queues' depth; the current target until
    the replicas have reported."""
    wanted = replicas_wanted(ctx.aggregated_metrics or {})
    return (ctx.target_num_replicas if wanted is None else wanted), {}


def pipeline(contexts: dict[DeploymentID, AutoscalingContext]) -> tuple[Decisions, States]:
    """Every autoscaled deployment of the application at one look."""
    by_name = {dep.name: (dep, ctx) for dep, ctx in contexts.items()}
    decisions: Decisions = {}
    states: States = {dep: dict(ctx.policy_state or {}) for dep, ctx in contexts.items()}
    demand = None
    if INGEST in by_name:
        dep, ctx = by_name[INGEST]
        decisions[dep], _ = ingest_by_queue_depth(ctx)
        demand = pool_demand(ctx.aggregated_metrics or {})
    pools = [name for name, _ in demand.pools if name in by_name] if demand else []
    for dep, ctx in contexts.items():
        if dep.name != INGEST and dep.name not in pools:
            decisions[dep], _ = replica_queue_length_autoscaling_policy(ctx)
    if demand is None or not pools:
        return decisions, states
    weights = dict(demand.pools)
    seen = [_seen(name, weights[name], *by_name[name]) for name in pools]
    memory = {name: states[by_name[name][0]] for name in pools}
    now = max(ctx.current_time or 0.0 for ctx in contexts.values()) or time.time()
    planned = plan_pools(demand.backlog_s, demand.drain_s, seen, memory, now)
    for name in pools:
        decisions[by_name[name][0]] = planned[name]
    return decisions, states


def _seen(name: str, weight: float, dep: DeploymentID, ctx: AutoscalingContext) -> PoolSeen:
    speeds = (ctx.aggregated_metrics or {}).get(SPEED, {})
    wanted, _ = replica_queue_length_autoscaling_policy(ctx)
    return PoolSeen(
        name=name,
        weight=weight,
        min_replicas=ctx.capacity_adjusted_min_replicas,
        max_replicas=ctx.capacity_adjusted_max_replicas,
        target=ctx.target_num_replicas,
        running=len(ctx.running_replicas),
        speeds=[float(v) for v in speeds.values()],
        by_requests=float(wanted),
    )
