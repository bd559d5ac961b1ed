"""Object storage against a real S3-compatible server process (moto_server): sizes read
before bodies, audio streamed into the decoder and cut off at the duration limit, the spool in
a bucket, and an outage (the server hung) as StorageUnavailableError, never half an audio."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from serve_app.errors import (
    AudioNotFoundError,
    AudioTooLargeError,
    AudioTooLongError,
    StorageUnavailableError,
)
from serve_app.jobs.housekeeping import Housekeeper
from serve_app.media import remote
from serve_app.media.audio import AudioLimits
from serve_app.media.objects import Grant, ObjectRef
from serve_app.media.spool import Spool
from serve_app.media.storage import ObjectStorage, StorageConfig, StorageWatch
from serve_app.schemas import TranscribeOptions
from serve_app.settings import Settings
from serve_app.store import JobStore
from serve_app.store.jobs import NewJob
from tests.support import speech
from tests.support.runner_standin import three_parts
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, S3Server

LIMITS = AudioLimits(max_bytes=20 * 1024 * 1024, max_duration_s=600)


class CountingStorage(ObjectStorage):
    """The real client, counting the bytes it hands on (to see what was fetched)."""

    fetched = 0

    def stream(self, ref: ObjectRef, write: Callable[[bytes], object], max_bytes: int) -> int:
        def counted(chunk: bytes) -> object:
            self.fetched += len(chunk)
            return write(chunk)

        return super().stream(ref, counted, max_bytes)


def _storage(s3: S3Server, timeout_s: float = 10, cls: type[ObjectStorage] = ObjectStorage):
    config = StorageConfig(s3.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY, timeout_s)
    return cls(config)


def _put(s3: S3Server, path: Path, bucket: str = "audio-in") -> ObjectRef:
    ref = ObjectRef(s3.bucket(bucket), f"calls/{uuid.uuid4().hex}{path.suffix}")
    s3.client().upload_file(str(path), ref.bucket, ref.key)
    return ref


def _tone(tmp_path: Path, seconds: int) -> Path:
    """A 16 kHz WAV: 32 kB a second, so a long one is several socket buffers long."""
    return speech.tone(tmp_path / f"tone_{seconds}.wav", seconds, ["-ar", "16000"])


def test_audio_in_a_bucket_decodes_as_the_file_does(
    s3: S3Server, clip: Callable[[str, str], Path]
) -> None:
    storage = _storage(s3)
    for suffix in (".wav", ".mp3", ".m4a", ".opus"):
        path = clip("en_office", suffix)
        ref = _put(s3, path)
        assert remote.check_object(storage, ref, LIMITS) == path.stat().st_size
        with open(path, "rb") as f:
            expected = remote.audio.decode(f, LIMITS)
        decoded = remote.decode_object(storage, ref, LIMITS)
        assert (decoded.samples == expected.samples).all(), suffix


def test_a_missing_object_and_a_missing_bucket_get_the_same_answer(s3: S3Server) -> None:
    storage = _storage(s3)
    s3.bucket("audio-in")
    for ref in (ObjectRef("audio-in", "calls/none.mp3"), ObjectRef("no-such-bucket", "x.mp3")):
        with pytest.raises(
            AudioNotFoundError, match=f"^No audio object this service may read at {ref}$"
        ):
            remote.check_object(storage, ref, LIMITS)


def test_size_is_refused_from_the_metadata_before_a_byte_is_fetched(
    s3: S3Server, tmp_path: Path
) -> None:
    storage = _storage(s3, cls=CountingStorage)
    ref = _put(s3, _tone(tmp_path, 300))  # 9.6 MB
    small = AudioLimits(max_bytes=1024 * 1024, max_duration_s=600)
    with pytest.raises(AudioTooLargeError, match=r"limit is 1\.0 MB"):
        remote.check_object(storage, ref, small)
    # An object that grew past the limit after its size was read: never more than the limit
    # plus a byte is fetched.
    with pytest.raises(AudioTooLargeError):
        remote.decode_object(storage, ref, small)
    assert storage.fetched <= small.max_bytes  # type: ignore[attr-defined]


def test_audio_over_the_duration_limit_stops_the_download(s3: S3Server, tmp_path: Path) -> None:
    storage = _storage(s3, cls=CountingStorage)
    path = _tone(tmp_path, 300)
    ref = _put(s3, path)
    with pytest.raises(AudioTooLongError):
        remote.decode_object(
            storage, ref, AudioLimits(max_bytes=LIMITS.max_bytes, max_duration_s=30)
        )
    fetched = storage.fetched  # type: ignore[attr-defined]
    assert fetched < path.stat().st_size / 2, f"{fetched} of {path.stat().st_size} bytes fetched"


def test_an_outage_is_a_storage_error_within_the_timeout(s3: S3Server) -> None:
    storage = _storage(s3, timeout_s=1)
    ref = ObjectRef(s3.bucket("audio-in"), "calls/x.wav")
    started = time.monotonic()
    with s3.outage(), pytest.raises(StorageUnavailableError) as raised:
        storage.size(ref)
    assert time.monotonic() - started < 15
    assert raised.value.retry_after_s > 0 and SECRET_KEY not in str(raised.value)


def test_an_outage_mid_download_is_an_error_not_half_the_audio(
    s3: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _tone(tmp_path, 600)  # 19 MB: far more than the sockets buffer

    class PausedAfterFirstChunk(ObjectStorage):
        def stream(self, ref: ObjectRef, write: Callable[[bytes], object], max_bytes: int) -> int:
            chunks = 0

            def then_pause(chunk: bytes) -> object:
                nonlocal chunks
                chunks += 1
                if chunks == 1:
                    outage.__enter__()
                return write(chunk)

            return super().stream(ref, then_pause, max_bytes)

    storage = _storage(s3, timeout_s=1, cls=PausedAfterFirstChunk)
    ref = _put(s3, path)
    outage = s3.outage()
    caplog.set_level(logging.WARNING)
    try:
        with pytest.raises(StorageUnavailableError):
            remote.decode_object(storage, ref, LIMITS)
    finally:
        outage.__exit__(None, None, None)
    assert SECRET_KEY not in caplog.text and ACCESS_KEY not in caplog.text
    assert SECRET_KEY not in repr(storage.config)


def test_the_spool_in_a_bucket_keeps_uploads_and_removes_only_its_own(
    s3: S3Server, tmp_path: Path
) -> None:
    storage = _storage(s3)
    bucket = s3.bucket("spool-test")
    spool = Spool(tmp_path / "local", Grant(bucket, "uploads/"), storage)
    upload = tmp_path / "upload.mp3"
    upload.write_bytes(b"ID3" + b"\0" * 5000)
    with open(upload, "rb") as f:
        name = spool.save(f, ".MP3")
    ref = ObjectRef.parse(name)
    assert ref.bucket == bucket and ref.key.startswith("uploads/") and ref.key.endswith(".mp3")
    assert storage.size(ref) == 5003
    assert not (tmp_path / "local").exists()  # nothing on this node's disk

    client = s3.client()
    client.put_object(Bucket=bucket, Key="theirs/keep.mp3", Body=b"x")
    spool.remove(f"s3://{bucket}/theirs/keep.mp3")
    spool.remove(f"s3://{bucket}/uploads/../theirs/keep.mp3")
    assert "theirs/keep.mp3" in s3.keys(bucket)

    with open(upload, "rb") as f:
        in_use = spool.save(f, ".mp3")
    assert spool.sweep_orphans({in_use}, max_age_s=0) == 1  # the first upload, unclaimed
    assert s3.keys(bucket, "uploads/") == [ObjectRef.parse(in_use).key]
    spool.remove(in_use)
    assert s3.keys(bucket, "uploads/") == []


def test_retention_deletes_a_finished_jobs_upload_from_the_bucket(
    store: JobStore, tmp_path: Path, s3: S3Server
) -> None:
    settings = Settings(data_dir=tmp_path / "data", job_retention_hours=0.5 / 3600)
    bucket = s3.bucket(f"retention-{uuid.uuid4().hex[:12]}")
    spool = Spool(tmp_path / "local", Grant(bucket, "spool/"), _storage(s3))
    upload = tmp_path / "upload.mp3"
    upload.write_bytes(b"ID3" + b"\0" * 100)
    jobs = []
    for _ in range(2):
        with open(upload, "rb") as f:
            name = spool.save(f, ".mp3")
        new = NewJob("http", name, TranscribeOptions(), "tiny.en", spooled=True)
        jobs.append(store.create(new)[0])
    finished, waiting = jobs
    store.start(finished.id)
    store.complete(finished.id, three_parts())
    housekeeper = Housekeeper(store, settings, spool=spool)
    deadline = time.monotonic() + 30
    while housekeeper.apply_retention() == 0:  # once the job is past its half second
        assert time.monotonic() < deadline, "retention never took the finished job"
        time.sleep(0.05)
    assert store.find(finished.id) is None
    assert s3.keys(bucket) == [ObjectRef.parse(waiting.audio_path).key]


async def test_the_watch_tells_a_hung_storage_from_one_that_answers(s3: S3Server) -> None:
    buckets = [s3.bucket("audio-in"), "no-such-bucket-here"]  # a refusal is an answer too
    watch = StorageWatch(_storage(s3, timeout_s=1), buckets)
    assert watch.summary() == {"status": "unknown", "buckets": dict.fromkeys(buckets, "unknown")}
    await watch.check()
    assert watch.summary() == {"status": "up", "buckets": dict.fromkeys(buckets, "up")}
    with s3.outage():
        await watch.check()
    assert watch.summary() == {"status": "down", "buckets": dict.fromkeys(buckets, "down")}
    await watch.check()
    assert watch.summary()["status"] == "up"
