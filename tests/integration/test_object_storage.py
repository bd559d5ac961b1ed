"""Object storage through the real `serve run` app and a real S3-compatible server process
(moto_server, tests/support/s3.py), driven as outside clients drive it: uploads spooled to a
bucket and read from there by the Ingest alone, s3:// sources on the AMQP queue and on JSON
jobs, results written back and named in the job view and the AMQP result, hostile names
refused, and the storage hanging mid-run waited out with one result and no attempt used."""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path
from typing import Any

from ingest import contract as c
from serve_app.media.objects import ObjectRef
from serve_app.schemas import QueuedTranscriptionRequest, Transcript
from tests.integration.conftest import (
    API_KEY,
    AUDIO_BUCKET,
    KEY_AUDIO_PREFIX,
    OTHER_KEY,
    RABBITMQ_URL,
    RESULTS_BUCKET,
    SPOOL_BUCKET,
    Service,
)
from tests.support import amqp, speech

_ids = itertools.count(int(time.time()) % 100000 * 1000 + 700)
OFFICE = speech.reference("en_office")


def _put(service: Service, path: Path, folder: str = "amqp/") -> str:
    key = f"{folder}{uuid.uuid4().hex}{path.suffix}"
    service.storage.client().upload_file(str(path), AUDIO_BUCKET, key)
    return f"s3://{AUDIO_BUCKET}/{key}"


def _read(service: Service, name: str) -> str:
    ref = ObjectRef.parse(name)
    body = service.storage.client().get_object(Bucket=ref.bucket, Key=ref.key)["Body"]
    return str(body.read().decode())


def _request(source: str, **extra: Any) -> dict[str, Any]:
    return {"attachment_id": next(_ids), "audio_file_path": source, "language": "en", **extra}


def _wait_job(service: Service, job_id: str, timeout: float = 120) -> dict[str, Any]:
    job: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal job
        with service.client() as client:
            job = client.get(f"/v1/jobs/{job_id}").json()
        return job["status"] in ("completed", "failed", "cancelled")

    speech.wait_until(finished, timeout, f"job {job_id} to finish", every=0.3)
    return job


def test_an_upload_lives_in_the_bucket_until_the_ingest_has_read_it(
    service: Service, clip: Any
) -> None:
    """The Gateway spools to the bucket and keeps nothing on its disk; the Ingest, another
    process (on a cluster, any node), reads the audio from the bucket; the upload goes once
    the job is done."""
    with service.client() as client, open(clip("en_office", ".opus"), "rb") as f:
        accepted = client.post(
            "/v1/jobs", files={"file": ("call.opus", f)}, data={"language": "en"}
        )
    assert accepted.status_code == 202, accepted.text
    audio = ObjectRef.parse(service.audio_of(accepted.json()["id"]))
    assert audio.bucket == SPOOL_BUCKET and audio.key.startswith("spool/")
    assert not any((service.data_dir / "spool").glob("*"))  # nothing on this node's disk
    job = _wait_job(service, accepted.json()["id"])
    assert job["status"] == "completed", job
    assert speech.word_error_rate(OFFICE, job["result"]["text"]) < 0.2
    assert audio.key not in service.storage.keys(SPOOL_BUCKET)


def test_an_amqp_request_names_an_object_and_its_result_names_the_written_back_ones(
    service: Service, results: amqp.ResultCollector, clip: Any
) -> None:
    # M4A: fetched whole into the Ingest's TMP_DIR first (its index may come last).
    request = _request(_put(service, clip("en_office", ".m4a")), response_format="srt")
    amqp.publish(RABBITMQ_URL, request)
    result = results.wait(request["attachment_id"], 120)
    assert result["success"] is True, result
    assert speech.word_error_rate(OFFICE, result["texto"]) < 0.2
    objects = result["result_objects"]
    key = c.job_key(QueuedTranscriptionRequest.model_validate(request))
    place = f"s3://{RESULTS_BUCKET}/results/{key}"
    assert objects == {"transcript": f"{place}/transcript.srt", "json": f"{place}/result.json"}
    assert _read(service, objects["transcript"]).startswith("1\n00:00:0")
    assert Transcript.model_validate_json(_read(service, objects["json"])).text == result["texto"]


def test_missing_refused_and_hostile_objects_get_one_error_result_each(
    service: Service, results: amqp.ResultCollector
) -> None:
    cases = {
        f"s3://{AUDIO_BUCKET}/amqp/{uuid.uuid4().hex}.mp3": "No audio object this service may",
        f"s3://{RESULTS_BUCKET}/results/x.mp3": "outside the allowed buckets",
        f"s3://{AUDIO_BUCKET}/amqp/../../etc/passwd.mp3": "segment",
        f"s3://{AUDIO_BUCKET}//etc/passwd.mp3": "must not start with '/'",
        f"s3://{AUDIO_BUCKET}/{'a' * 2000}.mp3": "the limit is 1024",
    }
    requests = [(_request(source), problem) for source, problem in cases.items()]
    bad_format = _request(f"s3://{AUDIO_BUCKET}/amqp/a.mp3", response_format="docx")
    requests.append((bad_format, "response_format must be one of"))
    amqp.publish(RABBITMQ_URL, *(request for request, _ in requests))
    for request, problem in requests:
        result = results.wait(request["attachment_id"], 60)
        assert result["success"] is False and problem in result["error_message"], result
        assert result["attempts"] == 1  # answered at once: no retry can change it
        assert len(results.all(request["attachment_id"])) == 1


def test_a_json_job_names_objects_in_its_keys_folder_only(service: Service, clip: Any) -> None:
    data = clip("en_office", ".mp3")
    mine = _put(service, data, KEY_AUDIO_PREFIX)
    elsewhere = _put(service, data, "amqp/")
    with service.client() as client, service.client(api_key=OTHER_KEY) as other:
        accepted = client.post("/v1/jobs", json={"audio_file_path": mine, "language": "en"})
        outside = client.post("/v1/jobs", json={"audio_file_path": elsewhere})
        absent = client.post("/v1/jobs", json={"audio_file_path": mine + ".missing.mp3"})
        no_buckets = other.post("/v1/jobs", json={"audio_file_path": mine})
    assert accepted.status_code == 202, accepted.text
    assert outside.status_code == absent.status_code == 404
    assert outside.json()["error"]["code"] == absent.json()["error"]["code"] == "audio_not_found"
    assert no_buckets.status_code == 403
    job = _wait_job(service, accepted.json()["id"])
    assert job["status"] == "completed" and job["filename"] == mine.rsplit("/", 1)[1]
    assert speech.word_error_rate(OFFICE, job["result"]["text"]) < 0.2
    assert API_KEY not in str(job)


def test_a_storage_outage_is_waited_out_with_one_result_and_no_attempt_used(
    service: Service, results: amqp.ResultCollector, clip: Any
) -> None:
    """The storage hangs (its process paused) while a request that names an object arrives:
    each try times out and the job waits for the storage, uncounted, as many times as it has
    attempts (the last of them on what would have been its final attempt, had waiting
    counted); an upload meanwhile is answered 503 with Retry-After. Once the storage answers
    again, the job runs and is answered once, on its first attempt."""
    request = _request(_put(service, clip("en_office", ".wav")))
    attachment = request["attachment_id"]
    waiting = f"Job {attachment} waits for room (Object storage could not"
    with service.storage.outage():
        amqp.publish(RABBITMQ_URL, request)
        with service.client(timeout=60) as client, open(clip("en_office", ".mp3"), "rb") as f:
            upload = client.post("/v1/jobs", files={"file": ("a.mp3", f)})
        assert upload.status_code == 503 and upload.json()["error"]["code"] == "storage_unavailable"
        assert int(upload.headers["retry-after"]) > 0
        speech.wait_until(
            lambda: (
                service.log.read_text(errors="replace").count(waiting) >= c.JOB_RETRIES.attempts
            ),
            120,
            "the job to wait for the storage as many times as it has attempts",
        )
        assert results.all(attachment) == []
        # HTTP transcription goes on without the storage: degraded, not down.
        health = service.health()
        assert health["status"] == "degraded" and health["storage"]["status"] == "down"
        assert health["storage"]["buckets"][AUDIO_BUCKET] == "down"
    result = results.wait(attachment, 120)
    assert result["success"] is True and result["attempts"] == 1, result
    speech.wait_until(
        lambda: (
            amqp.queue_depth(RABBITMQ_URL, c.RETRY_QUEUE)[0] == 0
            and amqp.queue_depth(RABBITMQ_URL, c.REQUEST_QUEUE)[0] == 0
        ),
        30,
        "the request and retry queues to be empty",
    )
    assert len(results.all(attachment)) == 1
    speech.wait_until(
        lambda: service.health()["status"] == "ok", 30, "/health to see the storage again"
    )
