"""The Serve app's RabbitMQ ingest, driven exactly as an outside producer and consumer would:
plain pika publishing the seed's request JSON on "/", reading whisper_results."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from ingest import contract as c
from serve_app.schemas import QueuedTranscriptionRequest
from tests.integration.conftest import (
    ADMIN_KEY,
    INGEST_REPLICAS,
    MAX_FILE_SIZE_MB,
    RABBITMQ_URL,
    WORKERS_COUNT,
    Service,
)
from tests.support import amqp, replica_logs, speech

_ids = itertools.count(int(time.time()) % 100000 * 1000 + 500)


def _job(path: Path | str, **extra: Any) -> dict[str, Any]:
    return {
        "attachment_id": next(_ids),
        "audio_file_path": str(path),
        "language": "",
        "import_batch_id": None,
        **extra,
    }


def _pool_replicas(service: Service) -> int:
    pools: Any = service.health()["pools"]
    return int(pools["TranscriberCPU"]["replicas"].get("RUNNING", 0))


def test_topology_is_the_contracts(service: Service) -> None:
    with amqp.connect(RABBITMQ_URL) as conn:
        amqp.declare_like_a_producer(conn.channel())  # PRECONDITION_FAILED if anything differs
    listing = json.loads(
        amqp.rabbitmqctl("list_queues", "name", "durable", "arguments", "--formatter", "json")
    )
    queues = {q["name"]: q for q in listing}
    assert all(
        queues[q]["durable"]
        for q in (c.REQUEST_QUEUE, c.RESULT_QUEUE, c.RETRY_QUEUE, c.REJECTED_QUEUE)
    )
    assert {n: v for n, _, v in queues[c.RETRY_QUEUE]["arguments"]} == c.RETRY_QUEUE_ARGUMENTS
    # Several ingest replicas are competing consumers of the one request queue.
    _, consumers = amqp.queue_depth(RABBITMQ_URL, c.REQUEST_QUEUE)
    assert consumers == INGEST_REPLICAS


def test_app_started_and_served_http_while_the_broker_was_down(service: Service) -> None:
    down = service.health_broker_down
    assert down["status"] == "degraded" and down["broker"]["status"] == "down"
    # Why the broker is down is in the logs, not here; no depth could be read.
    assert set(down["broker"]) == {"status", "queues", "ingest_replicas"}
    assert down["broker"]["queues"] == {}
    assert service.models_broker_down == 200
    # An async job cannot be queued durably then: refused, not accepted and lost.
    assert service.job_broker_down == 503


def test_health_reports_the_broker(service: Service) -> None:
    speech.wait_until(
        lambda: service.health()["broker"]["queues"],  # type: ignore[index]
        30,
        "an Ingest replica to read the queues' depths",
    )
    health: Any = service.health()
    broker = health["broker"]
    assert broker["status"] == "up" and broker["ingest_replicas"] == INGEST_REPLICAS
    # Each lane's depth on the broker, by a passive declare (no management plugin).
    assert set(broker["queues"]) == {"requests", "jobs"}
    assert all(set(d) == {"waiting", "retrying"} for d in broker["queues"].values())
    # Jobs in flight cluster-wide, by lane, from the job store.
    assert set(health["backlog"]["running"]) <= {"amqp", "http"}
    # Pools show replica counts by state, never replica ids.
    assert all(set(p) == {"status", "replicas", "in_flight"} for p in health["pools"].values())


def test_success_with_the_words_checked(service: Service, results, clip) -> None:
    job = _job(clip("en_office", ".mp3"), import_batch_id=42, language="en")
    amqp.publish(RABBITMQ_URL, job)
    result = results.wait(job["attachment_id"])
    assert result["success"] is True
    assert speech.word_error_rate(speech.reference("en_office"), result["texto"]) < 0.2
    assert result["model"] == "tiny.en" and result["import_batch_id"] == 42
    assert 12 < result["duration"] < 13.5
    assert "error_message" not in result
    assert result["language"] == "en" and result["segments"][0]["start"] == 0.0
    props = results.properties(job["attachment_id"])[0]
    assert props.delivery_mode == 2
    assert props.message_id and props.correlation_id == str(job["attachment_id"])
    # The job store records AMQP jobs too, next to HTTP ones: for admin keys, not client keys.
    with service.client() as client:
        jobs = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
        assert not [j for j in jobs if j["external_id"] == str(job["attachment_id"])]
    with service.client(api_key=ADMIN_KEY) as client:
        jobs = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
        mine = [j for j in jobs if j["external_id"] == str(job["attachment_id"])]
        assert len(mine) == 1 and mine[0]["source"] == "amqp", mine
        recorded = client.get(f"/v1/jobs/{mine[0]['id']}").json()
    assert recorded["status"] == "completed" and recorded["attempts"] == 1
    assert recorded["result"]["text"].strip() == result["texto"].strip()


def test_keywords_field_biases_the_decoder(results, clip) -> None:  # type: ignore[no-untyped-def]
    terms = ["Zyntrovia", "Vexlar", "Quetiapine"]
    job = _job(clip("en_rare_terms", ".mp3"), language="en", keywords=terms)
    amqp.publish(RABBITMQ_URL, job)
    result = results.wait(job["attachment_id"])
    assert result["success"] is True, result
    found = [term for term in terms if term.lower() in result["texto"].lower()]
    assert len(found) >= 2, result["texto"]


def _deterministic_cases(
    service: Service, speech_dir: Path, clip: Any
) -> dict[str, tuple[dict[str, Any], str]]:
    root = service.audio_dir
    (root / "notes.txt").write_text("not audio")
    (root / "empty.mp3").write_bytes(b"")
    (root / "junk.mp3").write_bytes(b"this is not an mp3 file " * 500)
    (root / "big.wav").write_bytes(b"\0" * (MAX_FILE_SIZE_MB + 1) * 1024 * 1024)
    (root / "folder.mp3").mkdir(exist_ok=True)
    secret = root.parent / "secret.mp3"
    shutil.copy(clip("en_office", ".mp3"), secret)
    link = root / "escape.mp3"
    if not link.is_symlink():
        link.symlink_to(secret)
    long_file = speech.low_bitrate_opus(root / "fifteen_minutes.opus", 900)
    spanish = clip("es_agua", ".mp3")
    return {
        "missing": (_job(root / "missing.mp3"), f"Audio file not found: {root}/missing.mp3"),
        "extension": (_job(root / "notes.txt"), "Unsupported audio extension .txt"),
        "empty": (_job(root / "empty.mp3"), "Audio file is empty"),
        "undecodable": (_job(root / "junk.mp3"), "Cannot"),
        "too large": (_job(root / "big.wav"), "limit is 2.0 MB"),
        "too long": (_job(long_file), "limit is 600 s"),
        "directory": (_job(root / "folder.mp3"), "not a regular file"),
        "outside roots": (_job("/etc/passwd.mp3"), "outside the allowed directories"),
        "traversal": (_job(f"{root}/../secret.mp3"), "outside the allowed directories"),
        "symlink escape": (_job(link), "outside the allowed directories"),
        "url": (_job("http://example.com/a.mp3"), "must be an absolute path"),
        "ffmpeg concat": (_job(f"concat:{root}/junk.mp3|{secret}"), "must be an absolute path"),
        "bad language": (_job(spanish, language="klingon"), "Unknown language code"),
        "english-only model": (_job(spanish, language="es"), "English-only"),
        "long keyword": (_job(spanish, keywords=["x" * 65]), "longer than 64 characters"),
        "keywords not text": (_job(spanish, keywords=[7]), "Malformed request"),
        "languages": (_job(spanish, languages=["es", "xx"]), "Unknown language code 'xx'"),
        "english-only languages": (_job(spanish, languages=["es", "pt"]), "must include 'en'"),
        "malformed": (
            {"attachment_id": next(_ids), "audio_file_path": ["x"], "import_batch_id": 5},
            "Malformed request",
        ),
    }


def test_deterministic_errors_get_one_error_result_at_once(
    service: Service, results, speech_dir: Path, clip
) -> None:
    cases = _deterministic_cases(service, speech_dir, clip)
    started = time.monotonic()
    amqp.publish(RABBITMQ_URL, *(job for job, _ in cases.values()))
    for name, (job, expected) in cases.items():
        result = results.wait(job["attachment_id"], timeout=30)
        assert result["success"] is False, name
        assert expected in result["error_message"], (name, result["error_message"])
        assert result["texto"] == "" and result["duration"] == 0, name
        assert result["import_batch_id"] == job.get("import_batch_id"), name
    # No retry happened: all answered before one retry TTL could pass, and nothing follows.
    assert time.monotonic() - started < c.RETRY_TTL_MS / 1000
    time.sleep(c.RETRY_TTL_MS / 1000 + 1)
    for name, (job, _) in cases.items():
        assert len(results.all(job["attachment_id"])) == 1, name


def test_unanswerable_messages_are_parked(service: Service, results, clip) -> None:
    amqp.drain(RABBITMQ_URL, c.REJECTED_QUEUE)
    good = _job(clip("en_office", ".ogg"))
    amqp.publish(RABBITMQ_URL, b"\x00\x01binary", {"audio_file_path": "/x.mp3"}, good)
    assert results.wait(good["attachment_id"])["success"] is True
    speech.wait_until(
        lambda: amqp.queue_depth(RABBITMQ_URL, c.REJECTED_QUEUE)[0] == 2, 10, "parking"
    )
    parked = amqp.drain(RABBITMQ_URL, c.REJECTED_QUEUE)
    assert sorted(h[c.REJECT_REASON_HEADER].split(" ")[0] for h, _ in parked) == ["body", "no"]


def test_replica_killed_mid_job_is_retried_and_answered_once(
    service: Service, results, speech_dir: Path
) -> None:
    # Just under FANOUT_MIN_SEC, so one model call holds the whole job when the kill lands.
    text = speech.reference("en_thirty") + " " + speech.reference("en_office")
    wav = speech.speak(text, "en-us", speech_dir / "fifty_five.wav", words_per_minute=120)
    job = _job(speech.encode(wav, ".mp3", speech_dir))
    key = c.job_key(QueuedTranscriptionRequest.model_validate(job))
    amqp.publish(RABBITMQ_URL, job)

    def decoding() -> bool:  # the model replica's line as it starts on the job
        return any(
            line["message"].startswith("Decoding ")
            for lines in replica_logs.about(service.pid, "TranscriberCPU", key)
            for line in lines
        )

    speech.wait_until(decoding, 60, "a model replica to start on the job")
    pids = service.replica_pids("TranscriberCPU")
    assert pids, "no model replica process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    result = results.wait(job["attachment_id"], timeout=180)
    assert result["success"] is True, result
    assert speech.word_error_rate(text, result["texto"]) < 0.3
    assert result["attempts"] == 2  # the first attempt died with the replica
    time.sleep(2)
    assert len(results.all(job["attachment_id"])) == 1
    speech.wait_until(lambda: _pool_replicas(service) >= 1, 120, "the model pool to recover")


def test_backlog_scales_model_replicas_up_then_down(service: Service, results, clip) -> None:
    """A backlog that lasts until the pool has scaled out: 16 jobs, topped up while they
    drain (a fast machine finished 16 clips in 22 s, before a second replica was up)."""
    speech.wait_until(lambda: _pool_replicas(service) == 1, 120, "a single replica to start from")
    audio = clip("en_thirty", ".mp3")
    jobs = [_job(audio) for _ in range(16)]
    amqp.publish(RABBITMQ_URL, *jobs)
    peak, unacked_samples = 1, []
    deadline = time.monotonic() + 300
    while not all(results.all(j["attachment_id"]) for j in jobs):
        assert time.monotonic() < deadline, "backlog not done in 300s"
        peak = max(peak, _pool_replicas(service))
        unacked_samples.append(amqp.unacked(c.REQUEST_QUEUE))
        if peak < 2 and amqp.queue_depth(RABBITMQ_URL, c.REQUEST_QUEUE)[0] < 8:
            more = [_job(audio) for _ in range(8)]
            amqp.publish(RABBITMQ_URL, *more)
            jobs += more
        time.sleep(0.5)
    assert peak == 2, "the backlog should have scaled the pool to max_replicas"
    print(f"backlog: {len(jobs)} jobs of 30 s published while the pool scaled out")
    # Unacked messages stay within what the ingest replicas may hold.
    assert max(unacked_samples) == INGEST_REPLICAS * WORKERS_COUNT, unacked_samples
    assert all(len(results.all(j["attachment_id"])) == 1 for j in jobs)
    speech.wait_until(lambda: _pool_replicas(service) == 1, 90, "the idle pool to scale back down")


def test_broker_restart_mid_run_gives_exactly_one_result_per_job(
    service: Service, results, clip
) -> None:
    jobs = [
        _job(clip("en_office", s))
        for s in (".mp3", ".ogg", ".flac", ".wav", ".m4a", ".opus", ".webm", ".aac")
    ]
    amqp.publish(RABBITMQ_URL, *jobs)
    speech.wait_until(
        lambda: any(results.all(j["attachment_id"]) for j in jobs), 60, "a first result"
    )
    amqp.rabbitmqctl("stop_app")
    try:
        speech.wait_until(
            lambda: service.health()["broker"]["status"] == "down",
            30,  # type: ignore[index]
            "health to report the broker down",
        )
        assert service.health()["status"] == "degraded"
        time.sleep(2)
    finally:
        amqp.rabbitmqctl("start_app")
    speech.wait_until(
        lambda: service.health()["broker"]["status"] == "up",
        90,  # type: ignore[index]
        "the ingest to resume consuming",
    )
    for job in jobs:
        assert results.wait(job["attachment_id"], timeout=180)["success"] is True
    time.sleep(c.RETRY_TTL_MS / 1000 + 2)
    counts = {j["attachment_id"]: len(results.all(j["attachment_id"])) for j in jobs}
    assert set(counts.values()) == {1}, counts


def test_cancelling_an_amqp_job_answers_it_once_as_cancelled(
    service: Service, results, speech_dir: Path
) -> None:
    job = _job(speech.four_minutes(speech_dir)[0])
    amqp.publish(RABBITMQ_URL, job)
    with service.client(api_key=ADMIN_KEY) as admin:

        def running() -> str | None:
            listing = admin.get("/v1/jobs", params={"status": "running", "limit": 100}).json()
            mine = [j for j in listing["data"] if j["external_id"] == str(job["attachment_id"])]
            return mine[0]["id"] if mine else None

        speech.wait_until(lambda: running() is not None, 60, "the AMQP job to run")
        job_id = running()
        assert admin.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    result = results.wait(job["attachment_id"], timeout=60)
    assert result["success"] is False and result["error_message"] == "Cancelled by request"
    # A four-minute job stopped at once: no success, no retry, no second answer, ever after.
    time.sleep(6)  # past one retry TTL (5 s)
    assert len(results.all(job["attachment_id"])) == 1


def test_a_result_that_could_not_be_published_is_answered_from_the_store(
    service: Service, results, clip
) -> None:
    job = _job(clip("en_office", ".mp3"))
    policy = f"refuse-results-{job['attachment_id']}"
    # A full results queue refuses publishes (the broker nacks them), as a deleted one would.
    amqp.rabbitmqctl(
        "set_policy", "-p", "/", "--apply-to", "queues", policy, f"^{c.RESULT_QUEUE}$",
        '{"max-length": 0, "overflow": "reject-publish"}',
    )  # fmt: skip
    try:
        amqp.publish(RABBITMQ_URL, job)
        with service.client(api_key=ADMIN_KEY) as admin:

            def recorded() -> dict[str, Any] | None:
                jobs = admin.get("/v1/jobs", params={"limit": 100}).json()["data"]
                mine = [j for j in jobs if j["external_id"] == str(job["attachment_id"])]
                return mine[0] if mine else None

            speech.wait_until(
                lambda: (recorded() or {}).get("status") == "completed", 60, "the transcript"
            )
            marker = f"Job {job['attachment_id']} answered from its stored result"
            speech.wait_until(lambda: marker in service.log.read_text(), 30, "a redelivery")
            assert results.all(job["attachment_id"]) == []
    finally:
        amqp.rabbitmqctl("clear_policy", "-p", "/", policy)
    result = results.wait(job["attachment_id"], timeout=30)
    assert result["success"] is True
    assert speech.word_error_rate(speech.reference("en_office"), result["texto"]) < 0.2
    with service.client(api_key=ADMIN_KEY) as admin:
        record = recorded()
    assert record is not None and record["attempts"] == 1  # transcribed once, answered later
