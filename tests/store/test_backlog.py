"""The backlog's inputs against real SQLite and PostgreSQL: unfinished jobs in queue order by
audio seconds left, and the speed model replicas report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, update

from serve_app.capacity.backlog import Snapshot
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.store import BacklogStore, JobStore, open_engine
from serve_app.store.backlog import UNKNOWN_DURATION_S
from serve_app.store.jobs import NewJob
from serve_app.store.rows import now
from serve_app.store.tables import replica_speeds


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = open_engine(url)
    yield engine
    engine.dispose()


def _job(store: JobStore, source: str = "http") -> str:
    new = NewJob(source=source, audio_path="/a.mp3", options=TranscribeOptions(), model="m")  # type: ignore[arg-type]
    job, _ = store.create(new)
    time.sleep(0.002)  # created_at orders the queue: keep them apart on coarse clocks
    return job.id


def _transcript(duration: float) -> Transcript:
    return Transcript(
        text="x", language="en", language_probability=1, duration=duration, segments=[], model="m"
    )


def test_unfinished_jobs_come_running_first_then_in_queue_order(engine: Engine) -> None:
    jobs, backlog = JobStore(engine), BacklogStore(engine)
    assert backlog.typical_duration() == UNKNOWN_DURATION_S
    done = _job(jobs)
    jobs.start(done)
    jobs.complete(done, _transcript(30.0))
    first, second, third = _job(jobs), _job(jobs), _job(jobs)
    jobs.start(third)
    jobs.record_progress(third, 40.0, 100.0)  # decoded: 100 s long, 40 s done

    pending = backlog.pending()
    assert [p.id for p in pending] == [third, first, second]
    assert [p.running for p in pending] == [True, False, False]
    # Not decoded yet: as long as the typical finished job (the one above, 30 s).
    assert [p.remaining_s for p in pending] == [60.0, 30.0, 30.0]
    jobs.cancel(first)
    assert [p.id for p in backlog.pending()] == [third, second]


def test_running_jobs_are_counted_by_the_lane_that_brought_them(engine: Engine) -> None:
    jobs, backlog = JobStore(engine), BacklogStore(engine)
    running = [_job(jobs, "amqp"), _job(jobs, "amqp"), _job(jobs, "http")]
    _job(jobs, "amqp")  # queued: not in flight
    for job in running:
        jobs.start(job)
    snapshot = Snapshot(now(), backlog.pending(), {})
    assert snapshot.summary()["running"] == {"amqp": 2, "http": 1}
    assert [p.lane for p in snapshot.pending] == ["amqp", "amqp", "http", "amqp"]


def test_a_pool_is_as_fast_as_its_replicas_heard_from_lately(engine: Engine) -> None:
    backlog = BacklogStore(engine)
    backlog.report("r1", "TranscriberCPU", "cpu", "base", 4.0, busy=True)
    backlog.report("r2", "TranscriberCPU", "cpu", "base", 6.0, busy=False)
    backlog.report("r3", "TranscriberCPU", "cpu", "base", None, busy=False)  # no figure yet
    backlog.report("g1", "TranscriberGPU", "cuda", "base", 40.0, busy=True)
    backlog.report("r1", "TranscriberCPU", "cpu", "base", 5.0, busy=True)  # a new report
    speeds = backlog.capacity()
    cpu = speeds["TranscriberCPU"]
    # r3 counts as the pool's average (5.5) until it has measured its own speed.
    assert (cpu.replicas, cpu.rate, cpu.busy) == (3, pytest.approx(16.5), 1)
    assert speeds["TranscriberGPU"].rate == 40.0

    stale = now() - timedelta(seconds=60)  # r2's node died a minute ago
    with engine.begin() as conn:
        conn.execute(
            update(replica_speeds).where(replica_speeds.c.replica == "r2").values(reported_at=stale)
        )
    assert backlog.capacity(fresh_s=30)["TranscriberCPU"].rate == pytest.approx(10.0)
    backlog.forget("g1")  # shut down on a downscale
    assert "TranscriberGPU" not in backlog.capacity()
