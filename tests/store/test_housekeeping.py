"""Retention and webhook delivery against a real store and real files."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from serve_app.jobs import webhooks
from serve_app.jobs.housekeeping import Housekeeper
from serve_app.media import spool
from serve_app.schemas import TranscribeOptions, Transcript, WebhookAttempt
from serve_app.settings import Settings
from serve_app.store import JobStore, WebhookStore, open_engine
from serve_app.store.jobs import NewJob
from serve_app.store.rows import now
from serve_app.store.tables import jobs
from tests.support.webhook_server import HUGE_BODY, self_signed, webhook_server


def _settings(tmp_path: Path, **values: object) -> Settings:
    # The receivers in these tests listen on 127.0.0.1, which the URL policy refuses otherwise.
    values.setdefault("webhook_allowed_hosts", ["127.0.0.1"])
    return Settings(data_dir=tmp_path / "data", webhook_secret="s3cret", **values)  # type: ignore[arg-type]


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


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
        async with webhooks.make_client() as client:
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


def _finished_with_webhook(store: JobStore, settings: Settings, url: str) -> str:
    job_id, _ = _spooled_job(store, settings, callback_url=url)
    store.start(job_id)
    store.complete(job_id, _transcript())
    return job_id


def _attempts(store: JobStore, job_id: str) -> tuple[str, list[WebhookAttempt]]:
    webhook = store.get(job_id).webhook
    assert webhook is not None
    return webhook.status, webhook.attempts


async def _one_round(store: JobStore, settings: Settings) -> float:
    """Deliver what is due once; returns the seconds it took."""
    started = time.monotonic()
    async with webhooks.make_client() as client:
        assert await Housekeeper(store, settings).deliver_webhooks(client) == 1
    return time.monotonic() - started


async def test_a_receiver_that_never_answers_is_cut_at_the_deadline(
    url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, webhook_timeout_sec=1)
    store = JobStore(open_engine(url))
    with webhook_server(behaviour="hang") as receiver:
        job_id = _finished_with_webhook(store, settings, receiver.url)
        elapsed = await _one_round(store, settings)
    assert elapsed < 2, elapsed
    assert len(receiver.received) == 1
    status, attempts = _attempts(store, job_id)
    assert status == "pending" and [a.error for a in attempts] == ["timed out"]


async def test_a_trickling_receiver_is_cut_at_the_total_deadline(url: str, tmp_path: Path) -> None:
    # One byte every 0.2 s keeps every single read under any per-read timeout.
    settings = _settings(tmp_path, webhook_timeout_sec=1)
    store = JobStore(open_engine(url))
    with webhook_server(behaviour="trickle") as receiver:
        job_id = _finished_with_webhook(store, settings, receiver.url)
        elapsed = await _one_round(store, settings)
    assert 0.9 <= elapsed < 2, elapsed
    assert receiver.sent >= 3  # it did keep trickling until the cut
    status, attempts = _attempts(store, job_id)
    assert status == "pending" and [a.error for a in attempts] == ["timed out"]


async def test_a_2xx_with_a_trickling_body_counts_as_delivered(url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, webhook_timeout_sec=1)
    store = JobStore(open_engine(url))
    with webhook_server(behaviour="trickle_body") as receiver:
        job_id = _finished_with_webhook(store, settings, receiver.url)
        elapsed = await _one_round(store, settings)
    assert elapsed < 2, elapsed
    status, attempts = _attempts(store, job_id)
    assert status == "delivered" and [a.status_code for a in attempts] == [200]


async def test_a_huge_answer_is_not_read(url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, webhook_timeout_sec=5)
    store = JobStore(open_engine(url))
    with webhook_server(behaviour="huge") as receiver:
        job_id = _finished_with_webhook(store, settings, receiver.url)
        elapsed = await _one_round(store, settings)
        await _until(receiver.finished.is_set, 5, "the receiver to see the hang-up")
    assert elapsed < 5, elapsed
    # The service stopped reading (and hung up) long before the receiver was done.
    assert receiver.sent < HUGE_BODY / 2, receiver.sent
    status, attempts = _attempts(store, job_id)
    assert status == "delivered" and [a.status_code for a in attempts] == [200]


async def test_retention_and_other_deliveries_go_on_while_a_delivery_hangs(
    url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, webhook_timeout_sec=30, job_retention_hours=1)
    engine = open_engine(url)
    store = JobStore(engine)
    old, old_audio = _spooled_job(store, settings)
    store.start(old)
    store.complete(old, _transcript())
    with engine.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id == old).values(finished_at=now() - timedelta(hours=2))
        )
    with (
        webhook_server(behaviour="hang") as hanging,
        webhook_server([200]) as answering,
    ):
        stuck = _finished_with_webhook(store, settings, hanging.url)
        answered = _finished_with_webhook(store, settings, answering.url)
        housekeeper = Housekeeper(store, settings, retention_every_s=0.1)
        running = asyncio.create_task(housekeeper.run())
        try:
            await _until(lambda: len(hanging.received) == 1, 5, "the hanging delivery")
            await _until(lambda: store.find(old) is None, 5, "retention")
            await _until(
                lambda: _attempts(store, answered)[0] == "delivered", 5, "the other delivery"
            )
            assert _attempts(store, stuck) == ("pending", [])  # still in flight
            assert not old_audio.exists()
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                async with asyncio.timeout(5):  # in-flight deliveries are cancelled with it
                    await running


def test_a_lost_lease_or_a_delivered_webhook_is_never_changed(url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    engine = open_engine(url)
    store, webhook_store = JobStore(engine), WebhookStore(engine)
    job_id = _finished_with_webhook(store, settings, "http://127.0.0.1:9/hook")
    failed = WebhookAttempt(at=now(), status_code=500)
    ok = WebhookAttempt(at=now(), status_code=200)

    first = webhook_store.claim_due(timedelta(0))  # a lease that has run out already
    assert [c.job.id for c in first] == [job_id]
    second = webhook_store.claim_due(timedelta(seconds=30))  # another replica takes it over
    assert [c.job.id for c in second] == [job_id]
    assert webhook_store.claim_due(timedelta(seconds=30)) == []  # leased
    assert second[0].token != first[0].token

    assert not webhook_store.record_attempt(job_id, first[0].token, ok, True, None)
    assert _attempts(store, job_id) == ("pending", [])
    assert webhook_store.record_attempt(job_id, second[0].token, failed, False, timedelta(0))
    third = webhook_store.claim_due(timedelta(seconds=30))
    assert webhook_store.record_attempt(job_id, third[0].token, ok, True, None)
    # Late answers from the older leases, and a replay of the winning one, change nothing.
    for token in (first[0].token, second[0].token, third[0].token):
        assert not webhook_store.record_attempt(job_id, token, failed, False, timedelta(0))
    status, attempts = _attempts(store, job_id)
    assert status == "delivered" and [a.status_code for a in attempts] == [500, 200]
    assert webhook_store.claim_due(timedelta(seconds=30)) == []


async def test_an_internal_address_is_refused_at_delivery_without_connecting(
    url: str, tmp_path: Path
) -> None:
    # 127.0.0.2 is loopback, and only 127.0.0.1 is allowed: a receiver listens there, unasked.
    settings = _settings(tmp_path, webhook_timeout_sec=5)
    store = JobStore(open_engine(url))
    with webhook_server(host="127.0.0.2") as receiver:
        job_id = _finished_with_webhook(store, settings, receiver.url)
        await _one_round(store, settings)
        assert receiver.connections == 0 and receiver.received == []
    status, attempts = _attempts(store, job_id)
    assert status == "pending" and [a.error for a in attempts] == ["address not allowed"]
    assert attempts[0].status_code is None


async def _deliver_tls(url: str, verify: ssl.SSLContext | bool) -> WebhookAttempt:
    async with webhooks.make_client(verify=verify) as client:
        delivered, attempt = await webhooks.deliver(
            client, url, "job", b"{}", "k", allowed_hosts=["localhost", "127.0.0.1"], timeout_s=5
        )
    assert delivered == (attempt.status_code == 200)
    return attempt


async def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    tmp_path: Path,
) -> None:
    certificate = self_signed("localhost")  # for the name only, not for 127.0.0.1
    tls = certificate.server_context(str(tmp_path))
    with webhook_server(tls=tls, url_host="localhost") as receiver:
        trusted = certificate.client_context()
        attempt = await _deliver_tls(receiver.url, trusted)
        assert attempt.status_code == 200
        port = receiver.url.split(":")[2].split("/")[0]
        assert receiver.received[0].headers["Host"] == f"localhost:{port}"
        # The same server by address: its certificate does not name 127.0.0.1.
        by_address = receiver.url.replace("localhost", "127.0.0.1")
        assert (await _deliver_tls(by_address, trusted)).error == "connection failed"
        # And an unknown certificate is refused whatever the name.
        default = await _deliver_tls(receiver.url, True)
        assert default.error == "connection failed"
    assert len(receiver.received) == 1
