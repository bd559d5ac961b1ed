"""Fair shares of the job slots, against a real store: which tenants run and wait, and a job
that gives its slot to another tenant's (``serve_app.jobs.fairness``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from serve_app.capacity.fair import Tenant
from serve_app.jobs.fairness import FairTurns
from serve_app.jobs.running import Outcome
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.store import BacklogStore, JobStore, Outbox
from serve_app.store.jobs import NewJob
from serve_app.store.rows import now
from serve_app.transcription.pipeline import FileRequest
from tests.support.runner_standin import StandIn, make_runner, three_parts


def _job(
    store: JobStore,
    tmp_path: Path,
    owner: str | None,
    source: str = "http",
    status: str = "queued",
    enqueued: bool = True,
) -> str:
    audio = tmp_path / "spool" / "a.mp3"
    audio.parent.mkdir(exist_ok=True)
    audio.write_bytes(b"x")
    job, _ = store.create(
        NewJob(
            source=source,  # type: ignore[arg-type]
            audio_path=str(audio),
            options=TranscribeOptions(),
            model="tiny.en",
            owner=owner,
            status=status,  # type: ignore[arg-type]
        )
    )
    if enqueued and source == "http":
        Outbox(store.engine).mark_enqueued(job.id)
    return job.id


def test_the_load_counts_running_jobs_and_the_tenants_with_one_on_its_way(
    store: JobStore, tmp_path: Path
) -> None:
    for _ in range(2):
        _job(store, tmp_path, "a", status="running")
    _job(store, tmp_path, "a")
    _job(store, tmp_path, "b")
    _job(store, tmp_path, "c", enqueued=False)  # its message not on the broker yet
    _job(store, tmp_path, None, source="amqp")
    _job(store, tmp_path, None, status="running")  # a service without keys, an admin key
    load = BacklogStore(store.engine)
    running, queued = load.tenant_load(now() - timedelta(minutes=10))
    assert running == {"a": 2, "*": 1}
    assert queued == {"a", "b", "amqp"}
    # Queued before the window: not waited for (a lost message must not hold others back).
    assert load.tenant_load(now() + timedelta(minutes=1))[1] == set()


async def test_a_job_gives_its_slot_to_a_tenant_running_fewer_and_takes_it_when_level(
    store: JobStore, tmp_path: Path
) -> None:
    runner = make_runner(store, tmp_path, StandIn())
    runner.turns = FairTurns(BacklogStore(store.engine))
    _job(store, tmp_path, "a", status="running")
    mine = _job(store, tmp_path, "a")
    other = _job(store, tmp_path, "b")
    outcome, reason = await runner.run(mine, 0, final=False)
    assert outcome is Outcome.DEFERRED and reason is not None and "fair share" in reason
    job = store.get(mine)
    assert job.status == "queued" and job.attempts == 0  # untouched: it comes again
    assert runner.claims.claim(mine, "anyone", 5) is not None  # and its claim is free
    runner.claims.release(mine, "anyone")
    assert (await runner.run(other, 0, final=False))[0] is Outcome.COMPLETED
    # b has nothing waiting now: a's job takes the slot, one running or not.
    assert (await runner.run(mine, 0, final=False))[0] is Outcome.COMPLETED


async def test_a_job_runs_with_its_keys_weight(store: JobStore, tmp_path: Path) -> None:
    seen: list[TranscribeOptions] = []

    async def transcribe(request: FileRequest) -> Transcript:
        seen.append(request.options)
        return three_parts()

    runner = make_runner(store, tmp_path, transcribe)
    runner.turns = FairTurns(BacklogStore(store.engine), weight=lambda t: 3.0 if t == "a" else 1)
    for owner in ("a", "b"):
        assert (await runner.run(_job(store, tmp_path, owner), 0, final=False))[0] is (
            Outcome.COMPLETED
        )
    assert [options.tenant for options in seen] == [Tenant("a", 3.0), Tenant("b", 1.0)]
