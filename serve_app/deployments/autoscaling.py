"""Custom Serve autoscaling policies (``autoscaling_config.policy.policy_function`` in the
YAML): Ray's side only; the arithmetic is plain Python in ``serve_app.capacity``."""

from __future__ import annotations

from typing import Any

from ray.serve.config import AutoscalingContext

from serve_app.capacity.intake import replicas_wanted


def ingest_by_queue_depth(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """The Ingest replicas whose prefetch covers the queues' depth; the current target until
    the replicas have reported (Serve applies min/max_replicas and the delays)."""
    wanted = replicas_wanted(ctx.aggregated_metrics or {})
    return (ctx.target_num_replicas if wanted is None else wanted), {}
