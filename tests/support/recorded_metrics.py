"""An in-memory metrics backend, for tests of what the core records."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from serve_app import metrics
from serve_app.metrics import Metric


class Recorded:
    def __init__(self) -> None:
        self.values: list[tuple[str, float, dict[str, str]]] = []

    def record(self, metric: Metric, value: float, labels: dict[str, str]) -> None:
        self.values.append((metric.name, value, labels))

    def of(self, name: str) -> list[tuple[float, dict[str, str]]]:
        return [(value, labels) for n, value, labels in self.values if n == name]


@contextmanager
def recording() -> Iterator[Recorded]:
    backend = Recorded()
    metrics.install(backend)
    try:
        yield backend
    finally:
        metrics.install(None)
