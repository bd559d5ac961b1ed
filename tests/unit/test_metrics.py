"""The metrics catalog and its recording calls, with an in-memory backend: pure logic."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from serve_app import metrics
from serve_app.metrics import CATALOG
from tests.support.recorded_metrics import Recorded, recording


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    with recording() as backend:
        yield backend


def test_the_catalog_follows_prometheus_conventions() -> None:
    for name, metric in CATALOG.items():
        assert name.startswith("whisper_") and name == metric.name
        assert name.endswith("_total") == (metric.kind == "counter"), name
        assert bool(metric.buckets) == (metric.kind == "histogram"), name
        assert list(metric.buckets) == sorted(metric.buckets)
        assert metric.description
        # Bounded labels only: nothing that names one job, file or key.
        assert not {"job_id", "attachment_id", "file", "key", "url"} & set(metric.labels)


def test_calls_reach_the_backend_with_their_labels(recorded: Recorded) -> None:
    metrics.inc("whisper_jobs_total", source="amqp", outcome="completed")
    metrics.observe("whisper_real_time_factor", 0.1, model="base", device="cpu")
    metrics.set_gauge("whisper_backlog_audio_seconds", 42.0)
    assert recorded.values == [
        ("whisper_jobs_total", 1.0, {"source": "amqp", "outcome": "completed"}),
        ("whisper_real_time_factor", 0.1, {"model": "base", "device": "cpu"}),
        ("whisper_backlog_audio_seconds", 42.0, {}),
    ]


def test_a_wrong_call_is_logged_and_dropped_never_raised(
    recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="serve_app.metrics"):
        metrics.inc("whisper_jobs_total", source="amqp")  # a label missing
        metrics.set_gauge("whisper_jobs_total", 1, source="amqp", outcome="x")  # not a gauge
        metrics.inc("whisper_no_such_metric")
    assert recorded.values == []
    assert len(caplog.records) == 3


def test_without_a_backend_nothing_happens() -> None:
    metrics.install(None)
    metrics.inc("whisper_jobs_total", source="amqp", outcome="completed")


def test_gauges_are_recorded_again_on_refresh(recorded: Recorded) -> None:
    metrics.set_gauge("whisper_broker_connected", 1.0)
    metrics.set_gauge("whisper_jobs_in_flight", 2.0, source="amqp")
    metrics.set_gauge("whisper_jobs_in_flight", 1.0, source="amqp")  # the last value counts
    recorded.values.clear()
    metrics.refresh()
    assert sorted(recorded.values) == [
        ("whisper_broker_connected", 1.0, {}),
        ("whisper_jobs_in_flight", 1.0, {"source": "amqp"}),
    ]
