"""One job's run against a real store, with stand-in transcription (the outcome logic)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serve_app.errors import InferenceError, UndecodableAudioError
from serve_app.fanout import ProgressFn, SegmentsFn
from serve_app.jobs import JobRunner, Outcome
from serve_app.schemas import Segment, TranscribeOptions, Transcript
from serve_app.store import JobStore, open_engine
from serve_app.store.jobs import NewJob


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

    async def __call__(
        self,
        path: str,
        options: TranscribeOptions,
        on_progress: ProgressFn,
        on_segments: SegmentsFn,
    ) -> Transcript:
        try:
            for i in range(3):
                await asyncio.sleep(self.delay)
                on_segments([_segment(i)])
                on_progress(i + 1.0, 3.0)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
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
def store(tmp_path: Path) -> JobStore:
    return JobStore(open_engine(f"sqlite:///{tmp_path / 'whisper.db'}"))


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


def _runner(store: JobStore, tmp_path: Path, stand_in: StandIn, timeout: float = 30) -> JobRunner:
    return JobRunner(store, stand_in, tmp_path / "spool", timeout, cancel_poll_s=0.05)


async def test_success_records_events_in_order_and_frees_the_audio(
    store: JobStore, tmp_path: Path
) -> None:
    job_id, audio = _job(store, tmp_path)
    outcome, _ = await _runner(store, tmp_path, StandIn()).run(job_id, 0, final=False)
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
