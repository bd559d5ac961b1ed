"""The metrics backend of every replica: Ray Serve's metrics API, which tags each value with
its deployment and replica and exports it through the node's metrics agent (Prometheus format,
and the Ray dashboard's Metrics view). Installed once per replica process."""

from __future__ import annotations

import threading
import time
from typing import Any

from ray.serve import metrics as serve_metrics

from serve_app import metrics
from serve_app.metrics import Metric


class RayMetrics:
    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    def record(self, metric: Metric, value: float, labels: dict[str, str]) -> None:
        made = self._made.get(metric.name)
        if made is None:
            made = self._made[metric.name] = _make(metric)
        if metric.kind == "counter":
            made.inc(value, tags=labels)
        elif metric.kind == "gauge":
            made.set(value, tags=labels)
        else:
            made.observe(value, tags=labels)


def _make(metric: Metric) -> Any:
    keys: Any = metric.labels or None  # Ray's hints say tuple[str]: one key
    if metric.kind == "counter":
        # Ray adds _total to a counter's name when it exports it.
        name = metric.name.removesuffix("_total")
        return serve_metrics.Counter(name, metric.description, tag_keys=keys)
    if metric.kind == "gauge":
        return serve_metrics.Gauge(metric.name, metric.description, tag_keys=keys)
    return serve_metrics.Histogram(
        metric.name, metric.description, boundaries=list(metric.buckets), tag_keys=keys
    )


def install(refresh_every_s: float = 5.0) -> None:
    if isinstance(metrics._backend, RayMetrics):
        return
    metrics.install(RayMetrics())

    def keep_gauges() -> None:
        while True:
            time.sleep(refresh_every_s)
            metrics.refresh()

    threading.Thread(target=keep_gauges, name="gauges", daemon=True).start()
