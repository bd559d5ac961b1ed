"""Waiters on a job are woken by its changes instead of polling (issue 39): within a process by
the store's own writes, across processes by PostgreSQL's NOTIFY; without a listener they read
on their old timers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.jobs.running import Outcome
from serve_app.schemas import TranscribeOptions
from serve_app.store import JobChanges, JobStore, make_engine, open_engine
from serve_app.store.jobs import NewJob
from tests.support.runner_standin import StandIn, make_runner, new_job

# A look every 5 s without notifications (50 s with them): a wake-up that came from a poll
# would take seconds, not the fraction of one asserted below.
POLL_S = 5.0


@pytest.fixture
def listening(url: str) -> Iterator[JobChanges]:
    """A hub listening on the database of ``url``, as a replica's (PostgreSQL only)."""
    engine = open_engine(url)
    changes = JobChanges()
    changes.listen(engine)
    deadline = time.monotonic() + 10
    while url.startswith("postgresql") and not changes.listening:
        assert time.monotonic() < deadline, "the listener did not connect"
        time.sleep(0.05)
    yield changes
    changes.stop()
    engine.dispose()


async def test_a_cancel_stops_the_running_job_at_once(
    url: str, listening: JobChanges, tmp_path: Path
) -> None:
    """The job runs on one replica's store; the cancel comes through another replica's (the
    Gateway's) on PostgreSQL, through the same process's on SQLite (no NOTIFY there)."""
    runner_store = JobStore(open_engine(url), listening)
    other = JobStore(make_engine(url)) if url.startswith("postgresql") else runner_store
    job_id, _ = new_job(runner_store, tmp_path)
    stand_in = StandIn(delay=30)
    runner = make_runner(runner_store, tmp_path, stand_in, cancel_poll=POLL_S)
    running = asyncio.create_task(runner.run(job_id, 0, final=False))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while runner_store.status(job_id) != "running":
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    cancelled_at = loop.time()
    await asyncio.to_thread(other.cancel, job_id)
    outcome, _ = await asyncio.wait_for(running, POLL_S)
    assert outcome is Outcome.CANCELLED and stand_in.cancelled
    assert loop.time() - cancelled_at < 1.5


async def test_watches_wake_for_their_jobs_events_endings_and_webhooks(
    url: str, listening: JobChanges, tmp_path: Path
) -> None:
    """A job's watch wakes for its events and its ending, a finish watch only for the ending,
    the webhook loop's only for an ending with a webhook to deliver."""
    writer = JobStore(make_engine(url)) if url.startswith("postgresql") else None
    store = JobStore(open_engine(url), listening)
    writer = writer or store
    job_id, _ = new_job(store, tmp_path)
    other_id, _ = new_job(store, tmp_path)
    with (
        listening.watch(job_id) as everything,
        listening.watch(job_id, finishes_only=True) as ending,
        listening.watch() as any_ending,
    ):
        await asyncio.to_thread(writer.start, other_id)
        assert not await everything.wait(0.3)  # another job's change
        await asyncio.to_thread(writer.start, job_id)
        assert await everything.wait(POLL_S)
        assert not await ending.wait(0.3) and not await any_ending.wait(0.01)
        await asyncio.to_thread(writer.record_progress, job_id, 1.0, 2.0)
        assert await everything.wait(POLL_S)
        await asyncio.to_thread(writer.fail, job_id, "broken")
        assert await ending.wait(POLL_S)
        assert not await any_ending.wait(0.3)  # no webhook to deliver
        webhook = store.create(
            NewJob("http", "a.mp3", TranscribeOptions(), "tiny.en", callback_url="https://x.test/")
        )[0]
        await asyncio.to_thread(writer.cancel, webhook.id)
        assert await any_ending.wait(POLL_S)


def test_without_a_listener_waiters_poll_as_before() -> None:
    changes = JobChanges()
    assert not changes.listening and changes.fallback(0.25) == 0.25
