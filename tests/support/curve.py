"""Sampling a running service's scaling about once a second, for the simulated-cluster
tests: the queue's depth, the Ingest and model replicas running (from /health) and the
deliveries held (as RabbitMQ counts them)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
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
    # Every model pool's replicas RUNNING, ``pool`` among them.
    pools: dict[str, int] = field(default_factory=dict)


class Curve:
    """Samples in a thread until stopped; ``pool`` names the model pool each sample counts
    as its ``pool`` (every pool is in its ``pools``)."""

    def __init__(self, url: str, amqp_url: str, vhost: str, pool: str = "TranscriberCPU") -> None:
        self.url = url
        self._amqp_url = amqp_url
        self._vhost = vhost
        self._pool = pool
        self.samples: list[Sample] = []
        self.started = time.monotonic()
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
            pools = {
                name: int(pool.get("replicas", {}).get("RUNNING", 0))
                for name, pool in seen.get("pools", {}).items()
            }
            self.samples.append(
                Sample(
                    round(time.monotonic() - self.started, 1),
                    depth,
                    int(seen.get("broker", {}).get("ingest_replicas", 0)),
                    pools.get(self._pool, 0),
                    held,
                    pools,
                )
            )

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(30)
        return self.samples

    def now(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def first_sample(self, timeout: float = 60) -> None:
        """Wait until the curve has a sample: the state before any work is on it."""
        deadline = time.monotonic() + timeout
        while self.now() is None:
            assert time.monotonic() < deadline, f"no sample of the curve in {timeout} s"
            time.sleep(0.2)

    def peak(self, pool: str) -> int:
        return max((s.pools.get(pool, 0) for s in self.samples), default=0)

    def table(self) -> str:
        names = sorted({name for s in self.samples for name in s.pools})
        lines = ["  t (s) | depth | Ingest | " + " | ".join(names) + " | in flight"]
        lines += [
            f"{s.t:7.1f} | {s.depth:5d} | {s.ingest:6d} | "
            + " | ".join(f"{s.pools.get(n, 0):{len(n)}d}" for n in names)
            + f" | {s.in_flight:9d}"
            for s in self.samples
        ]
        return "\n".join(lines)


def run_backlog(
    curve: Curve, amqp_url: str, results: amqp.ResultCollector, audio: str, ids: list[int]
) -> None:
    """Once the curve has a first sample, publish a Whisper-Local request for ``audio`` per
    id, and wait for each one's result, a success."""
    curve.first_sample()
    amqp.publish(amqp_url, *({"attachment_id": i, "audio_file_path": audio} for i in ids))
    for attachment_id in ids:
        assert results.wait(attachment_id, 600)["success"] is True
