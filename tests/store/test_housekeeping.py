"""Retention and webhook delivery against a real store and real files."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx

from serve_app import spool, webhooks
from serve_app.housekeeping import Housekeeper
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import Settings
from serve_app.store import JobStore, open_engine
from serve_app.store.jobs import NewJob
from tests.support.webhook_server import webhook_server


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", webhook_secret="s3cret", **values)  # type: ignore[arg-type]


def _spooled_job(store: JobStore, settings: Settings, **values: object) -> tuple[str, Path]:
    source = settings.data_dir / "upload.mp3"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"ID3 audio bytes")
    with open(source, "rb") as f:
        path = spool.save(f, settings.spool, ".mp3")
    job, _ = store.create(
        NewJob(
            source="http",
            audio_path=str(path),
            options=TranscribeOptions(),
            model="tiny.en",
            spooled=True,
            **values,  # type: ignore[arg-type]
        )
    )
    return job.id, path


def _transcript() -> Transcript:
    return Transcript(
        text="done", language="en", language_probability=1, duration=1, segments=[], model="m"
    )


def test_retention_deletes_old_jobs_their_audio_and_orphans(url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, job_retention_hours=0.5 / 3600)  # half a second
    store = JobStore(open_engine(url))
    finished, finished_audio = _spooled_job(store, settings)
    store.start(finished)
    store.complete(finished, _transcript())
    waiting, waiting_audio = _spooled_job(store, settings)
    orphan = settings.spool / "left-by-a-crash.mp3"
    orphan.write_bytes(b"x")
    old = time.time() - 2 * spool.ORPHAN_AGE_S
    os.utime(orphan, (old, old))
    fresh_orphan = settings.spool / "being-saved-now.mp3"
    fresh_orphan.write_bytes(b"x")

    housekeeper = Housekeeper(store, settings)
    time.sleep(0.6)
    assert housekeeper.apply_retention() == 1
    assert store.find(finished) is None and not finished_audio.exists()
    assert store.get(waiting).status == "queued" and waiting_audio.exists()
    assert not orphan.exists() and fresh_orphan.exists()


def test_spool_removal_stays_inside_the_spool(tmp_path: Path) -> None:
    outside = tmp_path / "client.mp3"
    outside.write_bytes(b"x")
    spool.remove(outside, tmp_path / "spool")
    assert outside.exists()


async def test_webhook_retries_with_backoff_then_gives_up(url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, webhook_max_attempts=3, webhook_backoff_sec=0.2)
    store = JobStore(open_engine(url))
    with webhook_server([503]) as receiver:
        job_id, _ = _spooled_job(store, settings, callback_url=receiver.url)
        store.start(job_id)
        store.fail(job_id, "broken audio")
        housekeeper = Housekeeper(store, settings)
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 10
            while len(receiver.received) < 3 and time.monotonic() < deadline:
                await housekeeper.deliver_webhooks(client)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert await housekeeper.deliver_webhooks(client) == 0  # given up
    webhook = store.get(job_id).webhook
    assert webhook is not None and webhook.status == "failed"
    assert [a.status_code for a in webhook.attempts] == [503, 503, 503]
    gaps = [
        (b.at - a.at).total_seconds()
        for a, b in zip(webhook.attempts, webhook.attempts[1:], strict=False)
    ]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps  # exponential backoff
    hit = receiver.received[0]
    headers = {k.lower(): v for k, v in hit.headers.items()}
    assert webhooks.verify(
        "s3cret",
        headers["x-whisper-timestamp"],
        hit.body,
        headers["x-whisper-signature"],
    )
