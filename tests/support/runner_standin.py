"""A job runner over a real store with stand-in transcription, for the runner's tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from serve_app.jobs.runner import JobRunner, RunPolicy
from serve_app.media.spool import Spool
from serve_app.schemas import Job, ResponseFormat, Segment, TranscribeOptions, Transcript
from serve_app.store import ClaimStore, JobStore, UnitStore
from serve_app.store.jobs import NewJob
from serve_app.transcription.pipeline import FileRequest


def segment(i: int) -> Segment:
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

    async def __call__(self, request: FileRequest) -> Transcript:
        self.calls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            for i in range(3):
                await asyncio.sleep(self.delay)
                request.on_segments([segment(i)])
                request.on_progress(i + 1.0, 3.0)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.running -= 1
        if self.error:
            raise self.error
        return three_parts()


def three_parts() -> Transcript:
    """What the stand-in transcribes every job to: 3 s, three segments."""
    return Transcript(
        text="part 0 part 1 part 2",
        language="en",
        language_probability=1,
        duration=3,
        segments=[segment(i) for i in range(3)],
        model="tiny.en",
    )


def new_job(
    store: JobStore, tmp_path: Path, response_format: ResponseFormat | None = None
) -> tuple[str, Path]:
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
            response_format=response_format,
        )
    )
    return job.id, audio


def make_runner(
    store: JobStore,
    tmp_path: Path,
    stand_in: Callable[[FileRequest], Awaitable[Transcript]],
    timeout: float = 30,
    lease: float = 5,
    cancel_poll: float = 0.05,
) -> JobRunner:
    policy = RunPolicy(
        timeout_s=timeout, lease_s=lease, cancel_poll_s=cancel_poll, busy_poll_s=0.05
    )
    engine = store.engine
    return JobRunner(
        store, ClaimStore(engine), UnitStore(engine), stand_in, Spool(tmp_path / "spool"), policy
    )


class Delivered:
    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.again: list[bool] = []  # whether each may have been handed on before

    async def __call__(self, job: Job, again: bool) -> None:
        self.jobs.append(job)
        self.again.append(again)
