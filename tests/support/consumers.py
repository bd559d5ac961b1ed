"""Consumers for tests against the real broker and a real store, with the job's work played
by a callable that takes the request (a stand-in, or the real pipeline)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from ingest.consumer import IngestConsumer
from ingest.transport import TransportConfig
from serve_app.jobs.runner import JobRunner, RunPolicy
from serve_app.jobs.service import JobService
from serve_app.media.spool import Spool
from serve_app.schemas import QueuedTranscriptionRequest, Transcript
from serve_app.store import ClaimStore, JobStore, Outbox, ResultLedger, UnitStore
from serve_app.transcription.pipeline import FileRequest, TranscribePathFn

Runner = Callable[[QueuedTranscriptionRequest], Awaitable[Transcript]]
SPOOL = Spool(Path(tempfile.gettempdir()) / "whisper-test-spool")


def by_request(run: Runner) -> TranscribePathFn:
    """The runner's transcribe call, handed to a callable of the request."""

    async def transcribe(asked: FileRequest) -> Transcript:
        request = QueuedTranscriptionRequest(
            attachment_id=0, audio_file_path=asked.path, language=asked.options.language or ""
        )
        return await run(request)

    return transcribe


def make_consumer(
    url: str,
    run: Runner,
    ledger: ResultLedger,
    *,
    prefetch: int = 4,
    grace: float = 30,
    lease_s: float = 10,
    timeout_s: float = 120,
) -> tuple[IngestConsumer, JobStore]:
    engine = ledger.engine
    store = JobStore(engine)
    runner = JobRunner(
        store,
        ClaimStore(engine),
        UnitStore(engine),
        by_request(run),
        SPOOL,
        RunPolicy(timeout_s=timeout_s, lease_s=lease_s, cancel_poll_s=0.2, busy_poll_s=0.2),
    )
    jobs = JobService(store, runner, ledger, Outbox(engine), "tiny.en")
    config = TransportConfig(url=url, prefetch=prefetch, shutdown_grace_s=grace, reconnect_max_s=2)
    return IngestConsumer(config, jobs, "tiny.en"), store


class Running:
    """A consumer task for the duration of a test (``async with``)."""

    def __init__(
        self,
        url: str,
        runner: Runner,
        ledger: ResultLedger,
        *,
        prefetch: int = 4,
        grace: float = 30,
        lease_s: float = 10,
    ) -> None:
        self.consumer, self.store = make_consumer(
            url, runner, ledger, prefetch=prefetch, grace=grace, lease_s=lease_s
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> IngestConsumer:
        self.task = asyncio.create_task(self.consumer.run())
        return self.consumer

    async def __aexit__(self, *_: object) -> None:
        await self.consumer.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)
