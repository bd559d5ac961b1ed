"""The submit route and the outbox: a submit cut off between recording the job and publishing
it (the client hung up, the Gateway died) leaves a job the sweeper publishes. The real-broker
half of this is in tests/integration/test_exactly_once.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from serve_app.jobs.housekeeping import Housekeeper
from serve_app.store import Outbox
from tests.support.api_standin import StandIn, client


async def test_a_submit_cut_off_before_publishing_is_swept(backend: StandIn) -> None:
    published: list[str] = []
    hang = asyncio.Event()

    async def never_returns(job_id: str) -> None:
        await hang.wait()

    backend.submit = never_returns  # type: ignore[method-assign]
    audio = str(backend.settings.allowed_audio_roots[0] / "a.mp3")
    async with client(backend) as http:
        request = asyncio.create_task(http.post("/v1/jobs", json={"audio_file_path": audio}))
        async with asyncio.timeout(10):
            while not backend.store.list_jobs()[0]:
                await asyncio.sleep(0.01)
        request.cancel()  # the client hangs up while the Gateway publishes
        await asyncio.gather(request, return_exceptions=True)
    [job], _ = backend.store.list_jobs()
    assert job.status == "queued"
    outbox = Outbox(backend.store.engine)
    assert outbox.unsent(timedelta(0)) == [job.id]

    async def publish(job_id: str) -> None:
        published.append(job_id)
        outbox.mark_enqueued(job_id)  # what IngestConsumer.submit_job does once confirmed

    settings = backend.settings.model_copy(update={"outbox_grace_sec": 0.01})
    keeper = Housekeeper(backend.store, settings, publish_job=publish)
    await asyncio.sleep(0.02)
    assert await keeper.sweep_outbox() == 1 and published == [job.id]
    assert await keeper.sweep_outbox() == 0  # published once
