"""Async jobs over HTTP against the real app: RabbitMQ carries them, the job store records them."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.jobs import webhooks
from serve_app.media.objects import ObjectRef
from tests.integration.conftest import (
    AMQP_PUBLISH_TIMEOUT_SEC,
    RESULTS_BUCKET,
    SPOOL_BUCKET,
    WEBHOOK_SECRET,
    Service,
)
from tests.support import amqp, speech, sse
from tests.support.webhook_server import webhook_server

OFFICE = speech.reference("en_office")
THIRTY = speech.reference("en_thirty")
FINISHED = {"completed", "failed", "cancelled"}


def _submit(client: httpx.Client, path: Path, **fields: Any) -> httpx.Response:
    with open(path, "rb") as f:
        return client.post("/v1/jobs", files={"file": (path.name, f)}, data=fields)


def _wait(client: httpx.Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


def _spool_files(service: Service) -> list[Path]:
    spool = service.data_dir / "spool"
    return [p for p in spool.iterdir() if not p.name.startswith(".")] if spool.is_dir() else []


def test_submit_poll_and_read_every_format(service: Service, clip) -> None:
    with service.client() as client:
        response = _submit(client, clip("en_office", ".mp3"), language="en")
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["status"] == "queued" and accepted["source"] == "http"
        job_id = accepted["id"]
        # Spooled to the bucket, where the Ingest (any node's) reads it: not to this disk.
        audio = ObjectRef.parse(service.audio_of(job_id))
        assert audio.bucket == SPOOL_BUCKET and _spool_files(service) == []
        assert response.headers["location"] == f"/v1/jobs/{job_id}"
        assert accepted["links"] == {
            "self": f"/v1/jobs/{job_id}",
            "events": f"/v1/jobs/{job_id}/events",
            "result": f"/v1/jobs/{job_id}/result",
        }
        job = _wait(client, job_id)
        assert job["status"] == "completed", job
        assert job["progress"] == 1.0 and job["attempts"] == 1 and job["error"] is None
        assert job["started_at"] and job["finished_at"] and job["filename"].endswith(".mp3")
        assert speech.word_error_rate(OFFICE, job["result"]["text"]) < 0.2

        as_json = client.get(f"/v1/jobs/{job_id}/result").json()
        usage = {"type": "duration", "seconds": round(job["result"]["duration"], 3)}
        assert as_json == {"text": job["result"]["text"], "usage": usage}
        text = client.get(f"/v1/jobs/{job_id}/result", params={"format": "text"})
        assert text.headers["content-type"].startswith("text/plain")
        assert text.text.strip() == job["result"]["text"]
        srt = client.get(f"/v1/jobs/{job_id}/result", params={"format": "srt"}).text
        assert srt.startswith("1\n00:00:0") and " --> " in srt
        vtt = client.get(f"/v1/jobs/{job_id}/result", params={"format": "vtt"}).text
        assert vtt.startswith("WEBVTT")
        verbose = client.get(f"/v1/jobs/{job_id}/result", params={"format": "verbose_json"})
        assert verbose.json()["language"] == "en" and verbose.json()["segments"]
        # Written back too: the transcript as text (no response_format) and a JSON copy.
        place = f"s3://{RESULTS_BUCKET}/results/{job_id}"
        assert job["result_objects"] == {
            "transcript": f"{place}/transcript.txt",
            "json": f"{place}/result.json",
        }
        written = service.storage.client().get_object(
            Bucket=RESULTS_BUCKET, Key=f"results/{job_id}/transcript.txt"
        )
        assert written["Body"].read().decode() == text.text
        bad = client.get(f"/v1/jobs/{job_id}/result", params={"format": "docx"})
        assert bad.status_code == 422

        listed = client.get("/v1/jobs", params={"status": "completed", "limit": 100}).json()
        assert job_id in [j["id"] for j in listed["data"]]
    # The upload was spooled for the job and deleted once it finished.
    assert audio.key not in service.storage.keys(SPOOL_BUCKET)


def test_json_job_with_a_shared_path(service: Service, clip) -> None:
    path = clip("en_office", ".flac")
    body = {
        "audio_file_path": str(path),
        "word_timestamps": True,
        "include": ["logprobs"],
        "keywords": ["Okonkwo"],
    }
    with service.client() as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job = _wait(client, response.json()["id"])
        as_json = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert job["status"] == "completed"
    assert job["options"]["keywords"] == ["Okonkwo"] and job["options"]["logprobs"] is True
    assert job["result"]["segments"][0]["words"], "word timestamps were asked for"
    tokens = "".join(t["token"] for t in as_json["logprobs"])
    assert tokens.strip() == as_json["text"] and as_json["usage"]["seconds"] > 10
    assert path.exists(), "a client's own file is never deleted"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        # Outside the key's roots: the answer of a missing file (it learns nothing of others').
        ({"audio_file_path": "/etc/passwd"}, 404, None),
        ({"audio_file_path": "relative/../../x.mp3"}, 422, None),
        ({}, 422, "audio_file_path"),
        ({"audio_file_path": "a.mp3", "task": "dance"}, 422, "task"),
        ({"audio_file_path": "a.mp3", "surprise": 1}, 422, "surprise"),
        ({"audio_file_path": "a.mp3", "callback_url": "ftp://x"}, 422, "callback_url"),
    ],
)
def test_bad_json_jobs_are_refused(
    service: Service, body: dict[str, Any], status: int, param: str | None
) -> None:
    with service.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
    if param:
        assert response.json()["error"]["param"] == param


def test_bad_uploads_are_refused(service: Service, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    with service.client() as client:
        assert _submit(client, text).status_code == 415
        assert _submit(client, empty).status_code == 400
        missing_file = client.post("/v1/jobs", data={"language": "en"}, files={"x": ("a", b"1")})
        assert missing_file.status_code == 422
        assert (
            client.post(
                "/v1/jobs", content=b"raw", headers={"content-type": "audio/mpeg"}
            ).status_code
            == 415
        )
        unknown_model = _submit(client, Path(__file__), model="large-v9")
        assert unknown_model.status_code == 422
        missing = client.post(
            "/v1/jobs", json={"audio_file_path": str(service.audio_dir / "absent.mp3")}
        )
        assert missing.status_code == 404


def test_undecodable_upload_fails_the_job_with_a_reason(service: Service, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"\x00\x01 not an mp3 " * 500)
    with service.client() as client:
        response = _submit(client, garbage)
        assert response.status_code == 202
        job = _wait(client, response.json()["id"])
        assert job["status"] == "failed" and job["attempts"] == 1, job  # no retry
        assert "decode" in job["error"].lower() or "cannot" in job["error"].lower()
        result = client.get(f"/v1/jobs/{job['id']}/result")
        assert result.status_code == 409 and "failed" in result.json()["error"]["message"]


def test_short_jobs_are_batched_together(service: Service, clip) -> None:
    """Jobs take their segments as events: short ones once went down the streaming path and
    were decoded one at a time, never in a batch with other jobs."""
    paths = [clip(name, s) for name in ("en_office", "en_thirty") for s in (".mp3", ".ogg")]
    offset = service.log.stat().st_size
    with service.client(timeout=300) as client:
        ids = [_submit(client, path).json()["id"] for path in paths]
        jobs = [_wait(client, job_id) for job_id in ids]
    assert [j["status"] for j in jobs] == ["completed"] * len(paths), jobs
    shared = re.compile(r"Decoded a batch of \d+ windows from ([2-9]|\d\d+) requests")

    def logged() -> bool:
        return bool(shared.search(service.log.read_bytes()[offset:].decode(errors="replace")))

    speech.wait_until(logged, 30, "a batch holding windows of two jobs or more")


def test_unknown_job_is_404(service: Service) -> None:
    with service.client() as client:
        for response in (
            client.get("/v1/jobs/nope"),
            client.get("/v1/jobs/nope/result"),
            client.get("/v1/jobs/nope/events"),
            client.delete("/v1/jobs/nope"),
        ):
            assert response.status_code == 404, response.text


def test_events_stream_in_order_and_replay_for_late_subscribers(service: Service, clip) -> None:
    with service.client(timeout=300) as client:
        job_id = _submit(client, clip("en_thirty", ".ogg")).json()["id"]
        live = sse.read(client, f"/v1/jobs/{job_id}/events")
        types = [e.event for e in live]
        assert types[0] == "queued" and "running" in types and types[-1] == "completed", types
        segments = [e.data for e in live if e.event == "segment"]
        assert len(segments) >= 2, "a 30 s clip decodes in several segments, each sent on its own"
        assert types.index("running") < types.index("segment") < types.index("completed")
        starts = [s["start"] for s in segments]
        assert starts == sorted(starts)
        final = live[-1].data["result"]
        assert "".join(s["text"] for s in segments).strip() == final["text"]
        assert speech.word_error_rate(THIRTY, final["text"]) < 0.25
        ids = [int(e.id) for e in live if e.id is not None]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)

        late = sse.read(client, f"/v1/jobs/{job_id}/events")
        assert [(e.id, e.event) for e in late] == [(e.id, e.event) for e in live]
        resumed = sse.read(client, f"/v1/jobs/{job_id}/events", last_event_id=live[2].id)
        assert [e.id for e in resumed] == [e.id for e in live[3:]]


def test_idempotency_key_returns_the_same_job(service: Service, clip) -> None:
    path = clip("en_office", ".wav")
    key = f"upload-{time.time_ns()}"
    with service.client() as client:
        first = _submit(client, path, idempotency_key=key)
        second = _submit(client, path, idempotency_key=key)
        assert first.status_code == 202 and second.status_code == 200
        assert first.json()["id"] == second.json()["id"]
        by_json = client.post(
            "/v1/jobs", json={"audio_file_path": str(path), "idempotency_key": key}
        )
        assert by_json.json()["id"] == first.json()["id"]
        _wait(client, first.json()["id"])


def test_a_broker_blocking_publishers_gets_a_503_not_a_hang(service: Service, clip) -> None:
    """A memory alarm (here: a watermark of 0) makes RabbitMQ block publishers silently: the
    submit is answered 503 within AMQP_PUBLISH_TIMEOUT_SEC and nothing is kept; once the alarm
    clears, the client's retry with the same key is accepted and runs."""
    path = clip("en_office", ".mp3")
    key = f"alarm-{time.time_ns()}"
    watermark = amqp.rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    amqp.rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        started = time.monotonic()
        with service.client(timeout=60) as client:
            refused = _submit(client, path, idempotency_key=key)
        waited = time.monotonic() - started
    finally:
        amqp.rabbitmqctl("set_vm_memory_high_watermark", watermark.strip())
    assert refused.status_code == 503, refused.text
    assert refused.headers.get("retry-after"), refused.headers
    assert "nothing was accepted" in refused.json()["error"]["message"]
    assert waited < AMQP_PUBLISH_TIMEOUT_SEC + 20, waited
    with service.client() as client:
        accepted = _submit(client, path, idempotency_key=key)
        assert accepted.status_code == 202, "the refused job's key was released"
        job = _wait(client, accepted.json()["id"])
    assert job["status"] == "completed" and job["attempts"] == 1, job


def test_cancel_a_queued_job(service: Service, clip) -> None:
    path = clip("en_thirty", ".mp3")
    with service.client() as client:
        # More jobs than the ingest replicas take at once (2 x WORKERS_COUNT 4): the last one
        # is still waiting in RabbitMQ when it is cancelled.
        ids = [_submit(client, path).json()["id"] for _ in range(10)]
        audio = [service.audio_of(job_id) for job_id in ids]
        cancelled = client.delete(f"/v1/jobs/{ids[-1]}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["started_at"] is None, "it was cancelled before it started"
        again = client.delete(f"/v1/jobs/{ids[-1]}")
        assert again.status_code == 409
        for job_id in ids[:-1]:
            assert _wait(client, job_id)["status"] == "completed"
        job = client.get(f"/v1/jobs/{ids[-1]}").json()
        assert job["status"] == "cancelled" and job["result"] is None
        events = sse.read(client, f"/v1/jobs/{ids[-1]}/events")
        assert events[-1].event == "cancelled"
        assert "segment" not in [e.event for e in events]
        assert client.get(f"/v1/jobs/{ids[-1]}/result").status_code == 409
    spooled = set(service.storage.keys(SPOOL_BUCKET))
    assert not spooled & {ObjectRef.parse(a).key for a in audio} and _spool_files(service) == []


def test_webhook_is_signed_and_retried_after_a_500(service: Service, clip) -> None:
    with webhook_server([500, 200]) as receiver, service.client() as client:
        response = _submit(client, clip("en_office", ".mp3"), callback_url=receiver.url)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        _wait(client, job_id)
        speech.wait_until(lambda: len(receiver.received) >= 2, 30, "the webhook retry")
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["webhook"]["status"] == "delivered"
    assert [a["status_code"] for a in job["webhook"]["attempts"]] == [500, 200]
    for hit in receiver.received:
        headers = {k.lower(): v for k, v in hit.headers.items()}
        assert hit.path == "/hooks/whisper"
        assert webhooks.verify(
            WEBHOOK_SECRET,
            headers[webhooks.TIMESTAMP_HEADER.lower()],
            hit.body,
            headers[webhooks.SIGNATURE_HEADER.lower()],
        )
        assert not webhooks.verify(
            "another-secret",
            headers[webhooks.TIMESTAMP_HEADER.lower()],
            hit.body,
            headers[webhooks.SIGNATURE_HEADER.lower()],
        )
        body = json.loads(hit.body)
        assert body["id"] == job_id and body["status"] == "completed"
        assert speech.word_error_rate(OFFICE, body["result"]["text"]) < 0.2


def test_api_keys_guard_v1_but_not_health(service: Service) -> None:
    with service.client(api_key=None) as anonymous, service.client(api_key="wrong") as wrong:
        for client in (anonymous, wrong):
            for response in (
                client.get("/v1/jobs"),
                client.get("/v1/models"),
                client.post("/v1/jobs", json={"audio_file_path": "x.mp3"}),
            ):
                assert response.status_code == 401, response.text
                assert response.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/health").status_code == 200
    with service.client(api_key="test-key-1") as other_key:
        assert other_key.get("/v1/jobs").status_code == 200
    assert "test-key-1" not in service.log.read_text()


def test_jobs_survive_every_replica_of_the_app_being_killed(service: Service, clip) -> None:
    """Accepted, then the Gateway, both Ingest replicas and the model replicas die (kill -9):
    Serve restarts them and RabbitMQ still holds the job, so it completes."""
    path = clip("en_thirty", ".wav")
    with service.client() as client:
        ids = [_submit(client, path).json()["id"] for _ in range(3)]
    replicas = [
        pid
        for name in ("Gateway", "Ingest", "TranscriberCPU")
        for pid in service.replica_pids(name)
    ]
    assert len(replicas) >= 4, replicas
    for pid in replicas:
        os.kill(pid, signal.SIGKILL)
    with service.client() as client:
        deadline = time.monotonic() + 120
        while True:  # the Gateway comes back first
            try:
                if client.get(f"/v1/jobs/{ids[0]}").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the app did not come back"
            time.sleep(1)
        for job_id in ids:
            job = _wait(client, job_id, timeout=300)
            assert job["status"] == "completed", job
            assert speech.word_error_rate(THIRTY, job["result"]["text"]) < 0.25


def test_jobs_accepted_before_an_app_restart_complete_after_it(service: Service, clip) -> None:
    """`serve run` stopped (Ctrl-C) right after accepting, then started again on the same data:
    the jobs RabbitMQ holds are finished by the new app, each exactly once."""
    path = clip("en_thirty", ".m4a")
    with service.client() as client:
        ids = [_submit(client, path).json()["id"] for _ in range(4)]
        before = [client.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in ids]
    assert any(status != "completed" for status in before), before
    service.restart()
    with service.client() as client:
        for job_id in ids:
            job = _wait(client, job_id, timeout=300)
            assert job["status"] == "completed", job
            assert speech.word_error_rate(THIRTY, job["result"]["text"]) < 0.25
            events = sse.read(client, f"/v1/jobs/{job_id}/events")
            assert [e.event for e in events].count("completed") == 1
