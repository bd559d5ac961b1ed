"""One job's run against a real store, with stand-in transcription: the outcome logic, and
the claim that keeps two deliveries of one job from both running it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from serve_app.errors import InferenceError, UndecodableAudioError
from serve_app.jobs.running import EventWriter, Outcome
from serve_app.schemas import Job, Transcript
from serve_app.store import ClaimStore, JobStore
from serve_app.store.tables import job_events
from serve_app.transcription.pipeline import FileRequest
from tests.support.recorded_metrics import recording
from tests.support.runner_standin import (
    Delivered,
    StandIn,
    make_runner,
    new_job,
    three_parts,
)


async def test_success_records_events_in_order_and_frees_the_audio(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, audio = new_job(store, tmp_path)
    with recording() as recorded:
        outcome, _ = await make_runner(store, tmp_path, StandIn()).run(job_id, 0, final=False)
    source = store.get(job_id).source
    assert recorded.of("whisper_jobs_total") == [(1.0, {"source": source, "outcome": "completed"})]
    assert [v for v, _ in recorded.of("whisper_jobs_in_flight")] == [1.0, 0.0]
    [(waited, _)] = recorded.of("whisper_queue_wait_seconds")
    assert 0 <= waited < 30
    assert outcome is Outcome.COMPLETED
    types = [e.type for e in store.events_after(job_id)]
    assert types == ["queued", "running"] + ["segment", "progress"] * 3 + ["completed"]
    assert store.get(job_id).progress == 1.0 and not audio.exists()


async def test_a_short_job_takes_five_transactions_and_keeps_its_transcript_once(
    store: JobStore, tmp_path: Path
) -> None:
    """Issue 39: claim, start, its length with its segments and its 100%, completion (which
    hands back the job to hand on), release. The completed event is stored without the
    transcript (it is on the job's row) and read back with it."""
    job_id, _ = new_job(store, tmp_path)
    done = three_parts()

    async def short(request: FileRequest) -> Transcript:
        # As the transcription service reports a short file: its length, then all at the end.
        request.on_progress(0.0, 3.0)
        await asyncio.sleep(0.05)
        request.on_segments(done.segments)
        request.on_progress(3.0, 3.0)
        return done

    begun: list[object] = []

    def count(connection: object) -> None:
        begun.append(connection)

    event.listen(store.engine, "begin", count)
    try:
        runner = make_runner(store, tmp_path, short, cancel_poll=60)
        outcome, _ = await runner.run(job_id, 0, final=False, deliver=Delivered())
    finally:
        event.remove(store.engine, "begin", count)
    assert outcome is Outcome.COMPLETED
    assert len(begun) == 5
    with store.engine.connect() as conn:
        stored = conn.execute(
            select(job_events.c.data).where(
                job_events.c.job_id == job_id, job_events.c.type == "completed"
            )
        ).scalar_one()
    assert stored == {"status": "completed"}
    [completed] = [e for e in store.events_after(job_id) if e.type == "completed"]
    assert completed.data["result"] == done.model_dump(mode="json")
    assert completed.data["result"] == store.get(job_id).model_dump(mode="json")["result"]


async def test_retryable_failure_requeues_until_the_final_attempt(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, audio = new_job(store, tmp_path)
    runner = make_runner(store, tmp_path, StandIn(InferenceError("replica died")))
    outcome, reason = await runner.run(job_id, 0, final=False)
    assert outcome is Outcome.RETRY and reason == "replica died"
    assert store.get(job_id).status == "queued" and audio.exists()
    outcome, _ = await runner.run(job_id, 2, final=True)
    job = store.get(job_id)
    assert outcome is Outcome.FAILED and job.attempts == 2
    assert job.error == "Failed after 3 attempts: replica died" and not audio.exists()


async def test_bad_audio_fails_at_once(store: JobStore, tmp_path: Path) -> None:
    job_id, _ = new_job(store, tmp_path)
    runner = make_runner(store, tmp_path, StandIn(UndecodableAudioError("Cannot decode")))
    outcome, _ = await runner.run(job_id, 0, final=False)
    assert outcome is Outcome.FAILED and store.get(job_id).error == "Cannot decode"


async def test_timeout_is_retryable(store: JobStore, tmp_path: Path) -> None:
    job_id, _ = new_job(store, tmp_path)
    runner = make_runner(store, tmp_path, StandIn(delay=1), timeout=0.2)
    outcome, reason = await runner.run(job_id, 0, final=False)
    assert outcome is Outcome.RETRY and reason and "Timed out" in reason


async def test_cancel_stops_the_running_work(store: JobStore, tmp_path: Path) -> None:
    job_id, audio = new_job(store, tmp_path)
    stand_in = StandIn(delay=0.3)
    running = asyncio.create_task(
        make_runner(store, tmp_path, stand_in).run(job_id, 0, final=False)
    )
    await asyncio.sleep(0.4)
    store.cancel(job_id)
    outcome, _ = await asyncio.wait_for(running, 5)
    assert outcome is Outcome.CANCELLED and stand_in.cancelled
    events = [e.type for e in store.events_after(job_id)]
    assert events[-1] == "cancelled" and "completed" not in events
    assert events.count("segment") < 3 and not audio.exists()


async def test_a_job_cancelled_while_queued_is_skipped(store: JobStore, tmp_path: Path) -> None:
    job_id, audio = new_job(store, tmp_path)
    store.cancel(job_id)
    stand_in = StandIn()
    outcome, _ = await make_runner(store, tmp_path, stand_in).run(job_id, 0, final=False)
    assert outcome is Outcome.SKIPPED and not audio.exists()


async def test_two_deliveries_at_once_run_the_job_once(store: JobStore, tmp_path: Path) -> None:
    """A retry copy beside its redelivered original, on two replicas: one transcribes, the
    other waits for the claim, then hands on the stored outcome."""
    job_id, _ = new_job(store, tmp_path)
    stand_in = StandIn(delay=0.2)
    delivered = Delivered()
    first, second = make_runner(store, tmp_path, stand_in), make_runner(store, tmp_path, stand_in)
    outcomes = await asyncio.gather(
        first.run(job_id, 0, final=False, deliver=delivered),
        second.run(job_id, 1, final=False, deliver=delivered),
    )
    assert sorted(o.value for o, _ in outcomes) == ["completed", "skipped"]
    assert stand_in.calls == 1 and store.get(job_id).attempts == 1
    assert [j.status for j in delivered.jobs] == ["completed", "completed"]
    assert delivered.again == [False, True]  # the copy's outcome may have gone out before


async def test_a_dead_holders_claim_runs_out_then_the_job_runs(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, _ = new_job(store, tmp_path)
    ClaimStore(store.engine).claim(job_id, "dead-replica:delivery", lease_s=1)
    stand_in = StandIn()
    started = asyncio.get_running_loop().time()
    outcome, _ = await make_runner(store, tmp_path, stand_in).run(job_id, 0, final=False)
    assert outcome is Outcome.COMPLETED and stand_in.calls == 1
    assert asyncio.get_running_loop().time() - started > 0.5  # it waited for the lease


async def test_a_job_whose_deliveries_died_three_times_gets_one_error(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, _ = new_job(store, tmp_path)
    claims = ClaimStore(store.engine)
    for n in range(3):  # each delivery started it, then its worker died (nothing recorded)
        claims.claim(job_id, f"dead-{n}", lease_s=0)
        assert store.start(job_id) is not None
    stand_in = StandIn()
    delivered = Delivered()
    outcome, reason = await make_runner(store, tmp_path, stand_in).run(
        job_id, 0, final=False, deliver=delivered
    )
    assert outcome is Outcome.FAILED and stand_in.calls == 0
    assert reason and "3 deliveries that never finished" in reason
    assert [j.error for j in delivered.jobs] == [reason]


async def test_jobs_whose_delivery_died_run_one_at_a_time(store: JobStore, tmp_path: Path) -> None:
    claims = ClaimStore(store.engine)
    suspects = []
    for n in range(3):
        job_id, _ = new_job(store, tmp_path)
        claims.claim(job_id, f"dead-{n}", lease_s=0)
        store.start(job_id)
        suspects.append(job_id)
    fresh, _ = new_job(store, tmp_path)
    stand_in = StandIn(delay=0.1)
    runner = make_runner(store, tmp_path, stand_in)
    outcomes = await asyncio.gather(*(runner.run(j, 0, final=False) for j in [*suspects, fresh]))
    assert all(o is Outcome.COMPLETED for o, _ in outcomes)
    # The fresh job beside one suspect: two at once, never two suspects.
    assert stand_in.most_at_once == 2


async def test_a_store_outage_after_the_outcome_is_handed_on_settles_the_delivery(
    store: JobStore, tmp_path: Path
) -> None:
    """Once the outcome is out, nothing may fail the delivery: its redelivery would hand the
    outcome on again (an AMQP job's second result when the ledger missed the first)."""
    job_id, _ = new_job(store, tmp_path)
    runner = make_runner(store, tmp_path, StandIn())
    delivered = Delivered()

    def down(*_: object) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    async def deliver_then_outage(job: Job, again: bool) -> None:
        await delivered(job, again)
        for target, name in [
            (store, "find"),
            (runner.claims, "release"),
            (runner.units, "drop_results"),
        ]:
            setattr(target, name, down)

    outcome, _ = await runner.run(job_id, 0, final=False, deliver=deliver_then_outage)
    assert outcome is Outcome.COMPLETED
    assert [j.status for j in delivered.jobs] == ["completed"]


async def test_a_jobs_length_alone_is_written_once_the_hold_is_over(
    store: JobStore, tmp_path: Path
) -> None:
    """The first report waits for company (issue 39), but not for ever: a long job's length
    reaches the store, and the backlog, while nothing else has come."""
    job_id, _ = new_job(store, tmp_path)
    store.start(job_id)
    events = EventWriter(store, job_id, hold_start_s=0.3).start()
    events.progress(0.0, 600.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while store.get(job_id).duration != 600.0:
        assert loop.time() < deadline, "the length was never written"
        await asyncio.sleep(0.05)
    await events.close()
    assert [e.type for e in store.events_after(job_id)] == ["queued", "running"]
