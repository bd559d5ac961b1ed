"""POST /v1/jobs with s3:// sources and a spool in a bucket, in-process: the real FastAPI app
and job store, a real S3-compatible server (moto_server), a stand-in for the model side.
Grants per key as for paths, one answer for a missing object and one outside the key's
buckets, sizes refused from the metadata, hostile names refused by what is wrong with them,
an outage answered 503 with Retry-After and nothing accepted."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from serve_app.media.objects import ObjectRef
from serve_app.media.storage import ObjectStorage, StorageConfig
from tests.support.api_standin import ADMIN, KEY_A, KEY_B, KEY_C, StandIn, client, make_backend
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, S3Server


@pytest.fixture
def buckets(tmp_path: Path, clip: Callable[[str, str], Path], s3: S3Server) -> StandIn:
    """Key A may read audio-in/a/, key B audio-in/b/, key C nothing; the admin all of
    audio-in; uploads spool to a bucket of their own."""
    storage = ObjectStorage(StorageConfig(s3.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY, 1))
    s3.bucket("audio-in")
    return make_backend(
        tmp_path,
        clip("en_office", ".mp3"),
        storage,
        allowed_audio_buckets=["audio-in"],
        api_key_audio_buckets={KEY_A: ["audio-in/a"], KEY_B: ["audio-in/b"]},
        spool_bucket=s3.bucket(f"spool-{uuid.uuid4().hex[:12]}"),
        max_file_size_mb=1,
    )


def _object(s3: S3Server, key: str, data: bytes) -> str:
    s3.client().put_object(Bucket="audio-in", Key=key, Body=data)
    return f"s3://audio-in/{key}"


async def test_a_key_names_objects_in_its_buckets_only_and_learns_nothing_of_others(
    buckets: StandIn, s3: S3Server, clip: Callable[[str, str], Path]
) -> None:
    data = clip("en_office", ".mp3").read_bytes()
    mine = _object(s3, f"a/{uuid.uuid4().hex}.mp3", data)
    theirs = _object(s3, f"b/{uuid.uuid4().hex}.mp3", data)
    missing = f"s3://audio-in/a/{uuid.uuid4().hex}.mp3"
    async with client(buckets, KEY_A) as a, client(buckets, ADMIN) as admin:
        accepted = await a.post("/v1/jobs", json={"audio_file_path": mine})
        other = await a.post("/v1/jobs", json={"audio_file_path": theirs})
        absent = await a.post("/v1/jobs", json={"audio_file_path": missing})
        by_admin = await admin.post("/v1/jobs", json={"audio_file_path": theirs})
        outside = await admin.post("/v1/jobs", json={"audio_file_path": "s3://elsewhere/x.mp3"})
    assert accepted.status_code == 202, accepted.text
    job = buckets.store.get(accepted.json()["id"])
    assert job.audio_path == mine and job.filename == mine.rsplit("/", 1)[1] and not job.spooled
    assert "audio_path" not in accepted.json()
    assert other.status_code == absent.status_code == 404
    assert other.json()["error"]["code"] == absent.json()["error"]["code"] == "audio_not_found"
    # The same words, but for the name itself.
    assert other.json()["error"]["message"].replace(theirs, "X") == absent.json()["error"][
        "message"
    ].replace(missing, "X")
    assert by_admin.status_code == 202
    assert outside.status_code == 422 and "outside the allowed buckets" in outside.text


@pytest.mark.parametrize(
    "name",
    [
        "s3://audio-in/a/../b/x.mp3",
        "s3://audio-in//a/x.mp3",
        "s3://audio-in/a/" + "x" * 2000 + ".mp3",
        "s3://audio-in/a/x\x00.mp3",
    ],
)
async def test_hostile_names_are_refused_before_the_storage_is_asked(
    buckets: StandIn, name: str
) -> None:
    async with client(buckets, KEY_A) as a:
        response = await a.post("/v1/jobs", json={"audio_file_path": name})
    assert response.status_code == 422 and response.json()["error"]["code"] == "path_not_allowed"


async def test_a_key_without_buckets_and_an_oversized_object(
    buckets: StandIn, s3: S3Server
) -> None:
    big = _object(
        s3,
        f"a/{uuid.uuid4().hex}.wav",
        b"RIFF" + b"\0" * (buckets.settings.max_file_size_bytes + 10),
    )
    async with client(buckets, KEY_C) as c, client(buckets, KEY_A) as a:
        refused = await c.post("/v1/jobs", json={"audio_file_path": big})
        too_big = await a.post("/v1/jobs", json={"audio_file_path": big})
    assert refused.status_code == 403 and "upload the audio instead" in refused.text
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "file_too_large"


async def test_uploads_spool_to_the_bucket_and_go_when_the_job_is_cancelled(
    buckets: StandIn, s3: S3Server, clip: Callable[[str, str], Path]
) -> None:
    data = clip("en_office", ".wav").read_bytes()
    spool = buckets.spool.bucket
    assert spool is not None
    async with client(buckets) as c:
        response = await c.post("/v1/jobs", files={"file": ("call.wav", data)})
        assert response.status_code == 202, response.text
        job = buckets.store.get(response.json()["id"])
        ref = ObjectRef.parse(job.audio_path)
        assert job.spooled and spool.covers(ref) and job.filename == "call.wav"
        assert s3.client().get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read() == data
        assert not buckets.settings.spool.exists()  # nothing on this node's disk
        assert (await c.delete(f"/v1/jobs/{job.id}")).status_code == 200
    assert s3.keys(spool.bucket) == []


async def test_a_storage_outage_is_503_with_retry_after_and_nothing_is_accepted(
    buckets: StandIn, s3: S3Server, clip: Callable[[str, str], Path]
) -> None:
    data = clip("en_office", ".wav").read_bytes()
    source = _object(s3, f"a/{uuid.uuid4().hex}.mp3", data)
    async with client(buckets) as c:
        with s3.outage():
            upload = await c.post("/v1/jobs", files={"file": ("call.wav", data)})
            named = await c.post("/v1/jobs", json={"audio_file_path": source})
        listed = (await c.get("/v1/jobs")).json()["data"]
    for response in (upload, named):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert int(response.headers["retry-after"]) > 0
        assert SECRET_KEY not in response.text
    assert listed == []


async def test_response_formats_are_checked_when_the_job_is_submitted(
    buckets: StandIn, s3: S3Server, clip: Callable[[str, str], Path]
) -> None:
    source = _object(s3, f"a/{uuid.uuid4().hex}.mp3", clip("en_office", ".mp3").read_bytes())
    async with client(buckets) as c:
        unknown = await c.post(
            "/v1/jobs", json={"audio_file_path": source, "response_format": "doc"}
        )
        undiarized = await c.post(
            "/v1/jobs", json={"audio_file_path": source, "response_format": "diarized_json"}
        )
        srt = await c.post("/v1/jobs", json={"audio_file_path": source, "response_format": "srt"})
    assert unknown.status_code == 422 and undiarized.status_code == 422
    assert srt.status_code == 202 and srt.json()["response_format"] == "srt"
