"""Results written back to a real S3-compatible server (moto_server) by the job runner: both
objects there before the job is recorded as completed, and a bucket outage deferring the job
(no attempt used, nothing lost) until the bucket answers again."""

from __future__ import annotations

from pathlib import Path

from serve_app import formats
from serve_app.jobs.exports import ResultExport
from serve_app.jobs.running import Outcome
from serve_app.media.objects import Grant
from serve_app.media.storage import ObjectStorage, StorageConfig
from serve_app.schemas import Transcript
from serve_app.store import JobStore
from tests.support.runner_standin import StandIn, make_runner, new_job, three_parts
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, S3Server


def _exports(s3: S3Server, bucket: str) -> ResultExport:
    config = StorageConfig(s3.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY, timeout_s=1)
    return ResultExport(ObjectStorage(config), Grant(s3.bucket(bucket), "out/"))


def _read(s3: S3Server, name: str) -> tuple[str, str]:
    bucket, _, key = name.removeprefix("s3://").partition("/")
    answer = s3.client().get_object(Bucket=bucket, Key=key)
    return answer["Body"].read().decode(), answer["ContentType"]


async def test_a_finished_job_has_its_transcript_and_a_json_copy_in_the_bucket(
    store: JobStore, tmp_path: Path, s3: S3Server
) -> None:
    runner = make_runner(store, tmp_path, StandIn())
    runner.exports = _exports(s3, "results-a")
    for fmt, extension in (("srt", "srt"), (None, "txt")):
        job_id, _ = new_job(store, tmp_path, fmt)  # type: ignore[arg-type]
        outcome, _ = await runner.run(job_id, 0, final=False)
        assert outcome is Outcome.COMPLETED
        job = store.get(job_id)
        assert job.result_objects == {
            "transcript": f"s3://results-a/out/{job_id}/transcript.{extension}",
            "json": f"s3://results-a/out/{job_id}/result.json",
        }
        body, content_type = _read(s3, job.result_objects["transcript"])
        assert body == formats.render(three_parts(), fmt or "text")
        assert content_type == formats.MEDIA_TYPES[fmt or "text"]
        copy, _ = _read(s3, job.result_objects["json"])
        assert Transcript.model_validate_json(copy) == three_parts() == job.result
        # The job view carries the names, as a webhook and GET /v1/jobs/{id} show it.
        assert job.model_dump(mode="json")["result_objects"] == job.result_objects


async def test_a_bucket_outage_defers_the_job_without_using_an_attempt(
    store: JobStore, tmp_path: Path, s3: S3Server
) -> None:
    transcribe = StandIn()
    runner = make_runner(store, tmp_path, transcribe)
    runner.exports = _exports(s3, "results-b")
    job_id, _ = new_job(store, tmp_path, "vtt")
    with s3.outage():
        # Even on what would be its last attempt: waiting for the bucket is no failure.
        outcome, reason = await runner.run(job_id, 2, final=True)
    assert outcome is Outcome.DEFERRED and "could not write" in (reason or "")
    assert SECRET_KEY not in (reason or "")
    job = store.get(job_id)
    assert job.status == "queued" and job.result is None and job.result_objects is None
    outcome, _ = await runner.run(job_id, 2, final=True)
    assert outcome is Outcome.COMPLETED
    job = store.get(job_id)
    assert job.result_objects is not None and s3.keys("results-b", f"out/{job_id}/") == [
        f"out/{job_id}/result.json",
        f"out/{job_id}/transcript.vtt",
    ]
    assert transcribe.calls == 2
