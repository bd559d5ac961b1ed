"""One job's run against a real store, with stand-in transcription: the outcome logic, and
the claim that keeps two deliveries of one job from both running it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select, update

from serve_app.errors import InferenceError, ServiceBusyError, UndecodableAudioError
from serve_app.fanout import Checkpoint, ProgressFn, SegmentsFn
from serve_app.jobs import Outcome
from serve_app.runner import JobRunner, RunPolicy
from serve_app.schemas import Job, Segment, TranscribeOptions, Transcript
from serve_app.store import Claim, ClaimStore, JobStore, UnitStore, make_engine, open_engine
from serve_app.store.jobs import NewJob
from serve_app.store.tables import jobs
from tests.support.recorded_metrics import recording
from tests.support.waiting import until


def _segment(i: int) -> Segment:
    return Segment(
        id=i,
        seek=0,
        start=float(i),
        end=i + 1.0,
        text=f" part {i}",
        tokens=[],
        temperature=0,
        avg_logprob=0,
        compression_ratio=1,
        no_speech_prob=0,
    )


class StandIn:
    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.error = error
        self.delay = delay
        self.cancelled = False
        self.calls = 0
        self.running = 0
        self.most_at_once = 0

    async def __call__(
        self,
        path: str,
        options: TranscribeOptions,
        on_progress: ProgressFn,
        on_segments: SegmentsFn,
        checkpoint: Checkpoint,
    ) -> Transcript:
        self.calls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            for i in range(3):
                await asyncio.sleep(self.delay)
                on_segments([_segment(i)])
                on_progress(i + 1.0, 3.0)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.running -= 1
        if self.error:
            raise self.error
        return Transcript(
            text="part 0 part 1 part 2",
            language="en",
            language_probability=1,
            duration=3,
            segments=[_segment(i) for i in range(3)],
            model="tiny.en",
        )


@pytest.fixture
def store(url: str) -> Iterator[JobStore]:
    engine = open_engine(url)
    yield JobStore(engine)
    engine.dispose()


def _job(store: JobStore, tmp_path: Path) -> tuple[str, Path]:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    audio = spool / "a.mp3"
    audio.write_bytes(b"x")
    job, _ = store.create(
        NewJob(
            source="http",
            audio_path=str(audio),
            options=TranscribeOptions(),
            model="tiny.en",
            spooled=True,
        )
    )
    return job.id, audio


def _runner(
    store: JobStore, tmp_path: Path, stand_in: StandIn, timeout: float = 30, lease: float = 5
) -> JobRunner:
    policy = RunPolicy(timeout_s=timeout, lease_s=lease, cancel_poll_s=0.05, busy_poll_s=0.05)
    engine = store.engine
    return JobRunner(
        store, ClaimStore(engine), UnitStore(engine), stand_in, tmp_path / "spool", policy
    )


async def test_success_records_events_in_order_and_frees_the_audio(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, audio = _job(store, tmp_path)
    with recording() as recorded:
        outcome, _ = await _runner(store, tmp_path, StandIn()).run(job_id, 0, final=False)
    source = store.get(job_id).source
    assert recorded.of("whisper_jobs_total") == [(1.0, {"source": source, "outcome": "completed"})]
    assert [v for v, _ in recorded.of("whisper_jobs_in_flight")] == [1.0, 0.0]
    [(waited, _)] = recorded.of("whisper_queue_wait_seconds")
    assert 0 <= waited < 30
    assert outcome is Outcome.COMPLETED
    types = [e.type for e in store.events_after(job_id)]
    assert types == ["queued", "running"] + ["segment", "progress"] * 3 + ["completed"]
    assert store.get(job_id).progress == 1.0 and not audio.exists()


async def test_retryable_failure_requeues_until_the_final_attempt(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, audio = _job(store, tmp_path)
    runner = _runner(store, tmp_path, StandIn(InferenceError("replica died")))
    outcome, reason = await runner.run(job_id, 0, final=False)
    assert outcome is Outcome.RETRY and reason == "replica died"
    assert store.get(job_id).status == "queued" and audio.exists()
    outcome, _ = await runner.run(job_id, 2, final=True)
    job = store.get(job_id)
    assert outcome is Outcome.FAILED and job.attempts == 2
    assert job.error == "Failed after 3 attempts: replica died" and not audio.exists()


async def test_bad_audio_fails_at_once(store: JobStore, tmp_path: Path) -> None:
    job_id, _ = _job(store, tmp_path)
    runner = _runner(store, tmp_path, StandIn(UndecodableAudioError("Cannot decode")))
    outcome, _ = await runner.run(job_id, 0, final=False)
    assert outcome is Outcome.FAILED and store.get(job_id).error == "Cannot decode"


async def test_timeout_is_retryable(store: JobStore, tmp_path: Path) -> None:
    job_id, _ = _job(store, tmp_path)
    runner = _runner(store, tmp_path, StandIn(delay=1), timeout=0.2)
    outcome, reason = await runner.run(job_id, 0, final=False)
    assert outcome is Outcome.RETRY and reason and "Timed out" in reason


async def test_cancel_stops_the_running_work(store: JobStore, tmp_path: Path) -> None:
    job_id, audio = _job(store, tmp_path)
    stand_in = StandIn(delay=0.3)
    running = asyncio.create_task(_runner(store, tmp_path, stand_in).run(job_id, 0, final=False))
    await asyncio.sleep(0.4)
    store.cancel(job_id)
    outcome, _ = await asyncio.wait_for(running, 5)
    assert outcome is Outcome.CANCELLED and stand_in.cancelled
    events = [e.type for e in store.events_after(job_id)]
    assert events[-1] == "cancelled" and "completed" not in events
    assert events.count("segment") < 3 and not audio.exists()


async def test_a_job_cancelled_while_queued_is_skipped(store: JobStore, tmp_path: Path) -> None:
    job_id, audio = _job(store, tmp_path)
    store.cancel(job_id)
    stand_in = StandIn()
    outcome, _ = await _runner(store, tmp_path, stand_in).run(job_id, 0, final=False)
    assert outcome is Outcome.SKIPPED and not audio.exists()


class Delivered:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    async def __call__(self, job: Job) -> None:
        self.jobs.append(job)


async def test_two_deliveries_at_once_run_the_job_once(store: JobStore, tmp_path: Path) -> None:
    """A retry copy beside its redelivered original, on two replicas: one transcribes, the
    other waits for the claim, then hands on the stored outcome."""
    job_id, _ = _job(store, tmp_path)
    stand_in = StandIn(delay=0.2)
    delivered = Delivered()
    first, second = _runner(store, tmp_path, stand_in), _runner(store, tmp_path, stand_in)
    outcomes = await asyncio.gather(
        first.run(job_id, 0, final=False, deliver=delivered),
        second.run(job_id, 1, final=False, deliver=delivered),
    )
    assert sorted(o.value for o, _ in outcomes) == ["completed", "skipped"]
    assert stand_in.calls == 1 and store.get(job_id).attempts == 1
    assert [j.status for j in delivered.jobs] == ["completed", "completed"]


async def test_a_dead_holders_claim_runs_out_then_the_job_runs(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, _ = _job(store, tmp_path)
    ClaimStore(store.engine).claim(job_id, "dead-replica:delivery", lease_s=1)
    stand_in = StandIn()
    started = asyncio.get_running_loop().time()
    outcome, _ = await _runner(store, tmp_path, stand_in).run(job_id, 0, final=False)
    assert outcome is Outcome.COMPLETED and stand_in.calls == 1
    assert asyncio.get_running_loop().time() - started > 0.5  # it waited for the lease


async def test_a_job_whose_deliveries_died_three_times_gets_one_error(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, _ = _job(store, tmp_path)
    claims = ClaimStore(store.engine)
    for n in range(3):  # each delivery started it, then its worker died (nothing recorded)
        claims.claim(job_id, f"dead-{n}", lease_s=0)
        assert store.start(job_id) is not None
    stand_in = StandIn()
    delivered = Delivered()
    outcome, reason = await _runner(store, tmp_path, stand_in).run(
        job_id, 0, final=False, deliver=delivered
    )
    assert outcome is Outcome.FAILED and stand_in.calls == 0
    assert reason and "3 deliveries that never finished" in reason
    assert [j.error for j in delivered.jobs] == [reason]


async def test_jobs_whose_delivery_died_run_one_at_a_time(store: JobStore, tmp_path: Path) -> None:
    claims = ClaimStore(store.engine)
    suspects = []
    for n in range(3):
        job_id, _ = _job(store, tmp_path)
        claims.claim(job_id, f"dead-{n}", lease_s=0)
        store.start(job_id)
        suspects.append(job_id)
    fresh, _ = _job(store, tmp_path)
    stand_in = StandIn(delay=0.1)
    runner = _runner(store, tmp_path, stand_in)
    outcomes = await asyncio.gather(*(runner.run(j, 0, final=False) for j in [*suspects, fresh]))
    assert all(o is Outcome.COMPLETED for o, _ in outcomes)
    # The fresh job beside one suspect: two at once, never two suspects.
    assert stand_in.most_at_once == 2


async def test_a_lost_claim_stops_the_delivery_which_settles(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, _ = _job(store, tmp_path)
    stand_in = StandIn(delay=1)
    running = asyncio.create_task(
        _runner(store, tmp_path, stand_in, lease=0.6).run(job_id, 0, final=False)
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
    job_id, _ = _job(store, tmp_path)
    stand_in = StandIn(delay=0.2)
    delivered = Delivered()
    running = asyncio.create_task(
        _runner(store, tmp_path, stand_in, lease=30).run(job_id, 0, False, delivered)
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
    job_id, _ = _job(store, tmp_path)
    slow, other = StandIn(delay=3), StandIn()
    loop = asyncio.get_running_loop()
    holder = asyncio.create_task(_runner(store, tmp_path, slow, lease=0.9).run(job_id, 0, False))
    await until(lambda: slow.calls == 1, 5, "the job started")
    started = loop.time()
    outcome, reason = await asyncio.wait_for(
        _runner(store, tmp_path, other, lease=0.9).run(job_id, 0, False), 20
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
    job_id, _ = _job(store, tmp_path)
    slow, other = StandIn(delay=0.6), StandIn()  # 1.8 s: renewed, within the wait's cap
    holder = asyncio.create_task(_runner(store, tmp_path, slow, lease=0.9).run(job_id, 0, False))
    await until(lambda: slow.calls == 1, 5, "the job started")
    copy = _runner(store, tmp_path, other, lease=0.9)
    outcome, reason = await asyncio.wait_for(copy.run(job_id, 0, False, redelivered=True), 20)
    assert holder.done() and (await holder)[0] is Outcome.COMPLETED
    assert (outcome, reason) == (Outcome.SKIPPED, None) and other.calls == 0


async def test_an_orderly_stop_gives_its_attempt_back(store: JobStore, tmp_path: Path) -> None:
    """Shutdowns and lost channels cancel the delivery: three of them in a row are not three
    dead workers, and the job then runs as its first attempt."""
    job_id, _ = _job(store, tmp_path)
    slow_give_back = SlowCall(store.give_back, 0.3)
    store.give_back = slow_give_back  # type: ignore[method-assign]
    for _ in range(3):
        slow_give_back.calls = 0
        stand_in = StandIn(delay=5)
        running = asyncio.create_task(_runner(store, tmp_path, stand_in).run(job_id, 0, False))
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
    outcome, _ = await _runner(store, tmp_path, StandIn()).run(job_id, 0, final=False)
    assert outcome is Outcome.COMPLETED and store.get(job_id).attempts == 1


async def test_no_room_for_the_audio_defers_without_using_an_attempt(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, audio = _job(store, tmp_path)
    busy = ServiceBusyError("The service holds as much audio as it may", 10)
    for _ in range(5):  # more than the attempts a job has, even as its final one
        outcome, reason = await _runner(store, tmp_path, StandIn(busy)).run(job_id, 2, True)
        assert outcome is Outcome.DEFERRED and reason == busy.message
        job = store.get(job_id)
        assert (job.status, job.attempts) == ("queued", 0) and audio.exists()
    outcome, _ = await _runner(store, tmp_path, StandIn()).run(job_id, 0, final=False)
    assert outcome is Outcome.COMPLETED and store.get(job_id).attempts == 1


async def test_renewals_go_on_while_the_shared_executor_is_full(
    store: JobStore, tmp_path: Path
) -> None:
    """Slow blocking work (hanging DNS, say) fills every thread of the default executor for
    longer than a lease: the claim is still renewed, so no second delivery can take the job."""
    job_id, _ = _job(store, tmp_path)
    stand_in = StandIn(delay=1)
    running = asyncio.create_task(
        _runner(store, tmp_path, stand_in, lease=0.9).run(job_id, 0, final=False)
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
    job_id, _ = _job(store, tmp_path)
    stand_in = StandIn(delay=1)
    policy = RunPolicy(timeout_s=30, lease_s=0.9, cancel_poll_s=0.05, busy_poll_s=0.05)
    own = make_engine(url, pool_size=2)
    engine = store.engine
    runner = JobRunner(
        store,
        ClaimStore(engine),
        UnitStore(engine),
        stand_in,
        tmp_path / "spool",
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
