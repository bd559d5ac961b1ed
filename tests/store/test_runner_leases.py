"""The runner's claim at its edges, against a real store (SQLite and PostgreSQL): a lost or
stale claim changes nothing, a live holder settles its duplicate, orderly stops and waits for
room are not attempts, and renewals go on when everything else is busy."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select, update

from serve_app.errors import ServiceBusyError
from serve_app.jobs.runner import JobRunner, RunPolicy
from serve_app.jobs.running import Outcome
from serve_app.media.spool import Spool
from serve_app.schemas import Transcript
from serve_app.store import Claim, ClaimStore, JobStore, UnitStore, make_engine
from serve_app.store.tables import jobs
from serve_app.transcription.pipeline import FileRequest
from tests.support.runner_standin import (
    Delivered,
    StandIn,
    make_runner,
    new_job,
    three_parts,
)
from tests.support.waiting import until


async def test_a_lost_claim_stops_the_delivery_which_settles(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, _ = new_job(store, tmp_path)
    stand_in = StandIn(delay=1)
    running = asyncio.create_task(
        make_runner(store, tmp_path, stand_in, lease=0.6).run(job_id, 0, final=False)
    )
    await asyncio.sleep(0.1)
    with store.engine.begin() as conn:  # another delivery took it over (our lease ran out)
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(lease_owner="other"))
    outcome, reason = await asyncio.wait_for(running, 5)
    # Settled (acked): the delivery holding the job now answers it.
    assert outcome is Outcome.SKIPPED and reason and "lost the claim" in reason
    assert stand_in.cancelled and store.get(job_id).status == "running"
    assert _owner(store, job_id) == "other"


async def test_a_stale_delivery_that_finishes_changes_nothing(
    store: JobStore, tmp_path: Path
) -> None:
    """The claim was taken over before the renewal noticed: the stale delivery's result,
    segments and ending are not written, and it hands nothing on."""
    job_id, _ = new_job(store, tmp_path)
    stand_in = StandIn(delay=0.2)
    delivered = Delivered()
    running = asyncio.create_task(
        make_runner(store, tmp_path, stand_in, lease=30).run(job_id, 0, False, delivered)
    )
    await until(lambda: stand_in.calls == 1, 5, "the job started")
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(lease_owner="other"))
    outcome, reason = await asyncio.wait_for(running, 5)
    assert outcome is Outcome.SKIPPED and reason and "lost the claim" in reason
    job = store.get(job_id)
    assert job.status == "running" and job.result is None and delivered.jobs == []
    assert [e.type for e in store.events_after(job_id)] == ["queued", "running"]


async def test_a_live_holder_settles_its_duplicate_without_a_long_wait(
    store: JobStore, tmp_path: Path
) -> None:
    """A duplicate delivery sees the holder renew its lease and is settled, instead of holding
    its unacked message for as long as the job runs."""
    job_id, _ = new_job(store, tmp_path)
    slow, other = StandIn(delay=3), StandIn()
    loop = asyncio.get_running_loop()
    holder = asyncio.create_task(
        make_runner(store, tmp_path, slow, lease=0.9).run(job_id, 0, False)
    )
    await until(lambda: slow.calls == 1, 5, "the job started")
    started = loop.time()
    outcome, reason = await asyncio.wait_for(
        make_runner(store, tmp_path, other, lease=0.9).run(job_id, 0, False), 20
    )
    assert outcome is Outcome.SKIPPED and reason == "another delivery is running it"
    assert loop.time() - started < 2 and not holder.done() and other.calls == 0
    assert (await holder)[0] is Outcome.COMPLETED


async def test_a_redelivered_copy_waits_for_the_claim_instead(
    store: JobStore, tmp_path: Path
) -> None:
    """A redelivered message may be the holder's own (its channel went while a renewal was
    landing): it never leaves the job to that holder, it waits and then answers from the
    store."""
    job_id, _ = new_job(store, tmp_path)
    slow, other = StandIn(delay=0.6), StandIn()  # 1.8 s: renewed, within the wait's cap
    holder = asyncio.create_task(
        make_runner(store, tmp_path, slow, lease=0.9).run(job_id, 0, False)
    )
    await until(lambda: slow.calls == 1, 5, "the job started")
    copy = make_runner(store, tmp_path, other, lease=0.9)
    outcome, reason = await asyncio.wait_for(copy.run(job_id, 0, False, redelivered=True), 20)
    assert holder.done() and (await holder)[0] is Outcome.COMPLETED
    assert (outcome, reason) == (Outcome.SKIPPED, None) and other.calls == 0


async def test_an_orderly_stop_gives_its_attempt_back(store: JobStore, tmp_path: Path) -> None:
    """Shutdowns and lost channels cancel the delivery: three of them in a row are not three
    dead workers, and the job then runs as its first attempt."""
    job_id, _ = new_job(store, tmp_path)
    slow_give_back = SlowCall(store.give_back, 0.3)
    store.give_back = slow_give_back  # type: ignore[method-assign]
    for _ in range(3):
        slow_give_back.calls = 0
        stand_in = StandIn(delay=5)
        running = asyncio.create_task(make_runner(store, tmp_path, stand_in).run(job_id, 0, False))
        await until(lambda s=stand_in: s.calls == 1, 5, "the delivery started")  # type: ignore[misc]
        # A lost channel cancels twice (the connection's close, then the channel's), the
        # second while the attempt is being given back: that still ends before the claim is
        # released (a release first would fence the give-back out).
        running.cancel()
        await until(lambda: slow_give_back.calls > 0, 5, "the give-back under way")
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        job = store.get(job_id)
        assert (job.status, job.attempts, _owner(store, job_id)) == ("queued", 0, None)
    outcome, _ = await make_runner(store, tmp_path, StandIn()).run(job_id, 0, final=False)
    assert outcome is Outcome.COMPLETED and store.get(job_id).attempts == 1


async def test_units_kept_by_a_stopped_delivery_go_once_the_job_is_done(
    store: JobStore, tmp_path: Path
) -> None:
    """A long job stopped in order after a unit was saved gives its attempt back, so the next
    delivery is attempt 1 again: the units it resumed from must still be dropped when the job
    ends (its result holds the text)."""
    job_id, _ = new_job(store, tmp_path)
    span, unit = (0, 16000), three_parts()
    saved = asyncio.Event()

    async def stopped_after_a_unit(request: FileRequest) -> Transcript:
        await request.checkpoint.save(span, unit)
        saved.set()
        await asyncio.sleep(60)  # stopped here
        raise AssertionError("not stopped")

    async def resumes(request: FileRequest) -> Transcript:
        assert await request.checkpoint.load() == {span: unit}
        return unit

    running = asyncio.create_task(
        make_runner(store, tmp_path, stopped_after_a_unit).run(job_id, 0, final=False)
    )
    await asyncio.wait_for(saved.wait(), 5)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert store.get(job_id).attempts == 0
    outcome, _ = await make_runner(store, tmp_path, resumes).run(job_id, 0, final=False)
    assert outcome is Outcome.COMPLETED and store.get(job_id).attempts == 1
    assert UnitStore(store.engine).done(job_id) == {}


async def test_no_room_for_the_audio_defers_without_using_an_attempt(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, audio = new_job(store, tmp_path)
    busy = ServiceBusyError("The service holds as much audio as it may", 10)
    for _ in range(5):  # more than the attempts a job has, even as its final one
        outcome, reason = await make_runner(store, tmp_path, StandIn(busy)).run(job_id, 2, True)
        assert outcome is Outcome.DEFERRED and reason == busy.message
        job = store.get(job_id)
        assert (job.status, job.attempts) == ("queued", 0) and audio.exists()
    outcome, _ = await make_runner(store, tmp_path, StandIn()).run(job_id, 0, final=False)
    assert outcome is Outcome.COMPLETED and store.get(job_id).attempts == 1


async def test_renewals_go_on_while_the_shared_executor_is_full(
    store: JobStore, tmp_path: Path
) -> None:
    """Slow blocking work (hanging DNS, say) fills every thread of the default executor for
    longer than a lease: the claim is still renewed, so no second delivery can take the job."""
    job_id, _ = new_job(store, tmp_path)
    stand_in = StandIn(delay=1)
    running = asyncio.create_task(
        make_runner(store, tmp_path, stand_in, lease=0.9).run(job_id, 0, final=False)
    )
    await until(lambda: stand_in.calls == 1, 5, "the job started")
    loop = asyncio.get_running_loop()
    blocker = threading.Event()
    filled = asyncio.gather(*(asyncio.to_thread(blocker.wait, 2.5) for _ in range(40)))
    claims, taken = ClaimStore(store.engine), []
    with ThreadPoolExecutor(1) as own:  # another replica's claim, on a thread of its own
        deadline = loop.time() + 2.3
        while loop.time() < deadline and not taken:
            got = await loop.run_in_executor(own, claims.claim, job_id, "other", 5)
            taken += [got] if isinstance(got, Claim) else []
            await asyncio.sleep(0.1)
    blocker.set()
    await filled
    assert taken == []
    assert (await asyncio.wait_for(running, 10))[0] is Outcome.COMPLETED


async def test_renewals_go_on_while_every_shared_connection_is_held(
    url: str, store: JobStore, tmp_path: Path
) -> None:
    """Blocking work holds every connection of the shared pool for longer than a lease: the
    renewals, on connections of their own, keep the claim (on the shared pool they waited, and
    another replica took the job)."""
    job_id, _ = new_job(store, tmp_path)
    stand_in = StandIn(delay=1)
    policy = RunPolicy(timeout_s=30, lease_s=0.9, cancel_poll_s=0.05, busy_poll_s=0.05)
    own = make_engine(url, pool_size=2)
    engine = store.engine
    runner = JobRunner(
        store,
        ClaimStore(engine),
        UnitStore(engine),
        stand_in,
        Spool(tmp_path / "spool"),
        policy,
        renewals=ClaimStore(own),
    )
    running = asyncio.create_task(runner.run(job_id, 0, final=False))
    await until(lambda: stand_in.calls == 1, 5, "the job started")
    held = [engine.connect() for _ in range(15)]  # the default pool: 5 and 10 more
    other, taken = ClaimStore(make_engine(url, pool_size=1)), []
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as thread:
        deadline = loop.time() + 2.3
        while loop.time() < deadline and not taken:
            got = await loop.run_in_executor(thread, other.claim, job_id, "other", 5)
            taken += [got] if isinstance(got, Claim) else []
            await asyncio.sleep(0.1)
    for connection in held:
        connection.close()
    assert taken == []
    assert (await asyncio.wait_for(running, 10))[0] is Outcome.COMPLETED
    own.dispose()


class SlowCall:
    """A blocking store call that takes ``delay_s`` longer, counting its calls."""

    def __init__(self, call: Callable[..., bool], delay_s: float) -> None:
        self.call, self.delay_s, self.calls = call, delay_s, 0

    def __call__(self, *args: object) -> bool:
        self.calls += 1
        time.sleep(self.delay_s)
        return self.call(*args)


def _owner(store: JobStore, job_id: str) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(select(jobs.c.lease_owner).where(jobs.c.id == job_id)).scalar()
