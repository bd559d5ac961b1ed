"""The service's own metrics, all named ``whisper_*``: what each counts, its labels, and the calls
the core makes to record them.

Labels are bounded (a source, an outcome, a model, a device, a pool; never a job id). Recording
goes to a backend installed when a replica starts (``serve_app.deployments.telemetry``: Ray's
metrics API, which adds the deployment and replica, and exports to the node's Prometheus
endpoint and the Ray dashboard). Without one (unit tests, the CLI) a call does nothing. Ray
prefixes what it exports with ``ray_``; ``cluster/prometheus`` scrapes them back to these names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

logger = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]
SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RATIOS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)
COUNTS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Metric:
    name: str  # as Prometheus shows it once scraped: counters end in _total
    kind: Kind
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


CATALOG = {
    m.name: m
    for m in (
        Metric(
            "whisper_jobs_total",
            "counter",
            "Job runs by source and how they ended",
            ("source", "outcome"),
        ),
        Metric("whisper_job_retries_total", "counter", "Retries published", ("source",)),
        Metric(
            "whisper_parked_messages_total",
            "counter",
            "Messages nobody can be answered for, parked on whisper_rejected",
        ),
        Metric(
            "whisper_audio_seconds_total",
            "counter",
            "Audio seconds transcribed by model replicas",
            ("model", "device"),
        ),
        Metric(
            "whisper_transcription_seconds",
            "histogram",
            "Wall time of one model call (a short file, or a unit of a long one)",
            ("model", "device"),
            SECONDS,
        ),
        Metric(
            "whisper_real_time_factor",
            "histogram",
            "Wall seconds per audio second of one model call (lower is faster)",
            ("model", "device"),
            RATIOS,
        ),
        Metric(
            "whisper_queue_wait_seconds",
            "histogram",
            "From a job's acceptance to its first start",
            ("source",),
            SECONDS,
        ),
        Metric("whisper_jobs_in_flight", "gauge", "Jobs running on an Ingest replica", ("source",)),
        Metric(
            "whisper_backlog_audio_seconds",
            "gauge",
            "Audio not transcribed yet: jobs queued or running, sync requests in flight",
        ),
        Metric(
            "whisper_pool_speed",
            "gauge",
            "Audio seconds a pool's replicas get through per second, as measured",
            ("pool",),
        ),
        Metric(
            "whisper_batch_windows",
            "histogram",
            "Speech windows decoded in one batch",
            buckets=COUNTS,
        ),
        Metric(
            "whisper_batch_requests",
            "histogram",
            "Requests whose windows shared one batch",
            buckets=COUNTS,
        ),
        Metric(
            "whisper_decode_failures_total",
            "counter",
            "Audio that could not be decoded (stage=audio) or transcribed (stage=model)",
            ("stage",),
        ),
        Metric(
            "whisper_webhook_deliveries_total",
            "counter",
            "Webhook delivery attempts by outcome",
            ("outcome",),
        ),
        Metric(
            "whisper_amqp_queue_depth",
            "gauge",
            "Messages on RabbitMQ per lane (requests, jobs): waiting in the work queue or "
            "retrying (in the TTL queue); every Ingest replica reports the same broker, so "
            "take the max across replicas",
            ("lane", "state"),
        ),
        Metric(
            "whisper_broker_connected",
            "gauge",
            "1 while an Ingest replica is connected to RabbitMQ and consuming",
        ),
        Metric(
            "whisper_model_load_seconds",
            "histogram",
            "Time to load a model into a replica (with its warm-up)",
            ("model", "device"),
            SECONDS,
        ),
    )
}


class Backend(Protocol):
    def record(self, metric: Metric, value: float, labels: dict[str, str]) -> None: ...


_backend: Backend | None = None
# Each gauge series' last value: Ray stops exporting a gauge nobody records for a while, and
# some change rarely (a broker connection), so ``refresh`` records them all again.
_gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}


def install(backend: Backend | None) -> None:
    global _backend
    _backend = backend
    _gauges.clear()


def refresh() -> None:
    for (name, labels), value in list(_gauges.items()):
        _record(name, "gauge", value, dict(labels))


def inc(name: str, value: float = 1.0, **labels: str) -> None:
    _record(name, "counter", value, labels)


def set_gauge(name: str, value: float, **labels: str) -> None:
    if _backend is not None:
        _gauges[(name, tuple(sorted(labels.items())))] = value
    _record(name, "gauge", value, labels)


def observe(name: str, value: float, **labels: str) -> None:
    _record(name, "histogram", value, labels)


def _record(name: str, kind: Kind, value: float, labels: dict[str, str]) -> None:
    if _backend is None:
        return
    metric = CATALOG.get(name)
    if metric is None or metric.kind != kind or set(labels) != set(metric.labels):
        # A programming error; the request it is counted for must not fail for it.
        logger.error("Metric %s recorded as a %s with labels %s: dropped", name, kind, labels)
        return
    try:
        _backend.record(metric, value, labels)
    except Exception:
        logger.exception("Could not record metric %s", name)
