"""Sampling a running service's scaling about once a second, for the simulated-cluster
tests: the queue's depth, the Ingest and model replicas running (from /health) and the
deliveries held (as RabbitMQ counts them)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ingest import contract as c
from tests.support import amqp


def health(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/health", timeout=10).json()
    return body


@dataclass(frozen=True)
class Sample:
    t: float
    depth: int  # waiting on the work queue and its retry queue
    ingest: int
    pool: int
    in_flight: int  # unacknowledged deliveries of the work queue


class Curve:
    """Samples in a thread until stopped; ``pool`` is the model pool counted."""

    def __init__(self, url: str, amqp_url: str, vhost: str, pool: str = "TranscriberCPU") -> None:
        self.url = url
        self._amqp_url = amqp_url
        self._vhost = vhost
        self._pool = pool
        self.samples: list[Sample] = []
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                seen = health(self.url)
                depth = sum(
                    amqp.queue_depth(self._amqp_url, q)[0] for q in (c.REQUEST_QUEUE, c.RETRY_QUEUE)
                )
                held = amqp.unacked(c.REQUEST_QUEUE, self._vhost)
            except Exception as exc:  # a slow /health or rabbitmqctl: the next second's
                print(f"sample skipped: {exc!r}")
                continue
            pool = seen.get("pools", {}).get(self._pool, {}).get("replicas", {})
            self.samples.append(
                Sample(
                    round(time.monotonic() - self._start, 1),
                    depth,
                    int(seen.get("broker", {}).get("ingest_replicas", 0)),
                    int(pool.get("RUNNING", 0)),
                    held,
                )
            )

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(30)
        return self.samples

    def now(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def table(self) -> str:
        lines = ["  t (s) | depth | Ingest | pool | in flight"]
        lines += [
            f"{s.t:7.1f} | {s.depth:5d} | {s.ingest:6d} | {s.pool:4d} | {s.in_flight:9d}"
            for s in self.samples
        ]
        return "\n".join(lines)


def run_backlog(
    curve: Curve, amqp_url: str, results: amqp.ResultCollector, audio: str, ids: list[int]
) -> None:
    """Once the curve has a first sample, publish a Whisper-Local request for ``audio`` per
    id, and wait for each one's result, a success."""
    deadline = time.monotonic() + 60
    while curve.now() is None:
        assert time.monotonic() < deadline, "no sample of the curve in 60 s"
        time.sleep(0.2)
    amqp.publish(amqp_url, *({"attachment_id": i, "audio_file_path": audio} for i in ids))
    for attachment_id in ids:
        assert results.wait(attachment_id, 600)["success"] is True
