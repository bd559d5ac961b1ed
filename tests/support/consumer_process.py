"""A consumer in a process of its own, for tests that kill it: ``python -m
tests.support.consumer_process MODE AMQP_URL DATABASE_URL AUDIO_ROOT``.

- ``poison``: a stand-in job that answers at once, except that a request for
  ``.../poison.mp3`` kills the process (as a decoder or driver crash would).
- ``real``: the real pipeline and tiny.en, long files fanned out in 30 s units with each
  unit checkpointed, two units at a time (as two model replicas would).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from serve_app.jobs.runner import JobRunner, RunPolicy
from serve_app.model.calls import UnitCall
from serve_app.model.chunking import ChunkingOptions
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import QueuedTranscriptionRequest, Transcript
from serve_app.settings import Settings
from serve_app.store import ClaimStore, JobStore, Outbox, ResultLedger, UnitStore, open_engine
from serve_app.transcription.fanout import FanOut
from serve_app.transcription.pipeline import (
    FileRequest,
    TranscribePathFn,
    admission_for,
    transcribe_file,
)
from tests.support.consumers import SPOOL, by_request

LEASE_S = 3.0


async def poison(request: QueuedTranscriptionRequest) -> Transcript:
    if request.audio_file_path.endswith("poison.mp3"):
        os._exit(17)
    await asyncio.sleep(0.3)
    return Transcript(
        text="fine", language="en", language_probability=1, duration=1, segments=[], model="m"
    )


def real(root: Path) -> TranscribePathFn:
    settings = Settings(whisper_model="tiny.en", allowed_audio_roots=[root])
    tiny = Transcriber.load("tiny.en", settings)
    slots = asyncio.Semaphore(2)
    admission = admission_for(settings, None)

    class Tiny:  # the model port, in this process
        async def transcribe_unit(self, call: UnitCall) -> Transcript:
            async with slots:
                return await asyncio.to_thread(
                    tiny.transcribe_windows, call.audio, call.windows, call.options
                )

        async def detect_language(self, part, model, allowed=None):  # type: ignore[no-untyped-def]
            return await asyncio.to_thread(tiny.detect_language, part)

    fan_out = FanOut(Tiny(), ChunkingOptions(unit_s=30, min_fanout_s=60))

    async def transcribe(request: FileRequest) -> Transcript:
        async def model(samples, opts):  # type: ignore[no-untyped-def]
            return await fan_out.transcribe(
                samples, opts, request.on_progress, request.on_segments, request.checkpoint
            )

        return await transcribe_file(request.path, request.options, settings, model, admission)

    return transcribe


async def main(mode: str, url: str, database: str, root: Path) -> None:
    from ingest.consumer import IngestConsumer
    from ingest.transport import TransportConfig
    from serve_app.jobs.service import JobService

    engine = open_engine(database)
    store = JobStore(engine)
    transcribe = by_request(poison) if mode == "poison" else real(root)
    runner = JobRunner(
        store,
        ClaimStore(engine),
        UnitStore(engine),
        transcribe,
        SPOOL,
        RunPolicy(timeout_s=600, lease_s=LEASE_S, busy_poll_s=0.2),
    )
    jobs = JobService(store, runner, ResultLedger(engine), Outbox(engine), "tiny.en")
    consumer = IngestConsumer(
        TransportConfig(url=url, prefetch=4, reconnect_max_s=2), jobs, "tiny.en"
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(consumer.run())
    await stop.wait()
    await consumer.stop()
    await task


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])))
