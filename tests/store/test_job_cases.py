"""The HTTP job use cases (serve_app.jobs.service) on a real store: what is kept, forgotten
and removed when a job is submitted, raced, refused by the queue or cancelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.errors import JobNotFoundError, QueueUnavailableError, QuotaExceededError
from serve_app.jobs import service
from serve_app.media.spool import Spool
from serve_app.schemas import TranscribeOptions
from serve_app.store import JobStore
from serve_app.store.jobs import EVERYONE, NewJob, Viewer


def _upload(spool: Path, name: str) -> Path:
    spool.mkdir(exist_ok=True)
    path = spool / name
    path.write_bytes(b"audio")
    return path


def _new(path: Path, key: str | None = None, owner: str | None = None) -> NewJob:
    return NewJob(
        source="http",
        audio_path=str(path),
        options=TranscribeOptions(),
        model="tiny.en",
        spooled=True,
        idempotency_key=key,
        owner=owner,
        audio_bytes=5,
    )


async def _queued(job_id: str) -> None:
    return None


async def _queue_down(job_id: str) -> None:
    raise QueueUnavailableError()


async def test_a_job_the_queue_refused_is_forgotten_with_its_upload(
    store: JobStore, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    upload = _upload(spool, "a.wav")
    with pytest.raises(QueueUnavailableError):
        await service.submit(store, _new(upload, key="k"), _queue_down, Spool(spool))
    assert not upload.exists()
    assert store.find_by_idempotency_key("k") is None  # the client's retry starts clean
    job, created = await service.submit(
        store, _new(_upload(spool, "b.wav"), key="k"), _queued, Spool(spool)
    )
    assert created and job.status == "queued"


async def test_the_loser_of_an_idempotency_race_gets_the_winners_job_and_drops_its_upload(
    store: JobStore, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first, second = _upload(spool, "a.wav"), _upload(spool, "b.wav")
    winner, created = await service.submit(store, _new(first, key="k"), _queued, Spool(spool))
    again, created_again = await service.submit(store, _new(second, key="k"), _queued, Spool(spool))
    assert created and not created_again and again.id == winner.id
    assert first.exists() and not second.exists()


async def test_a_cancelled_job_loses_its_upload_and_others_cannot_cancel_it(
    store: JobStore, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    upload = _upload(spool, "a.wav")
    job, _ = await service.submit(store, _new(upload, owner="a"), _queued, Spool(spool))
    with pytest.raises(JobNotFoundError):
        await service.cancel(store, job.id, Viewer(owner="b", everyone=False), Spool(spool))
    assert upload.exists()
    cancelled = await service.cancel(store, job.id, EVERYONE, Spool(spool))
    assert cancelled.status == "cancelled" and not upload.exists()


async def test_an_owners_quota_counts_its_unfinished_jobs_and_uploads(
    store: JobStore, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    await service.submit(store, _new(_upload(spool, "a.wav"), owner="a"), _queued, Spool(spool))
    await service.check_quota(store, "a", 0, service.Quota(max_jobs=2, max_spooled_mb=1))
    with pytest.raises(QuotaExceededError, match="1 unfinished jobs"):
        await service.check_quota(store, "a", 0, service.Quota(max_jobs=1, max_spooled_mb=1))
    with pytest.raises(QuotaExceededError, match="uploads"):
        await service.check_quota(store, "a", 1 << 20, service.Quota(max_jobs=2, max_spooled_mb=1))
    await service.check_quota(store, "b", 0, service.Quota(max_jobs=1, max_spooled_mb=1))
