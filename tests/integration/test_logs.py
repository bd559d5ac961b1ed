"""Replica logs as JSON lines: every line about a job names it (job, attachment_id, source,
attempt, replica), each run ends with one line of timings, and no secret or transcript text is
ever written."""

from __future__ import annotations

import time
from pathlib import Path

from ingest import contract as c
from serve_app.schemas import QueuedTranscriptionRequest
from tests.integration.conftest import (
    ADMIN_KEY,
    API_KEY,
    RABBITMQ_URL,
    WEBHOOK_SECRET,
    Service,
)
from tests.support import amqp, replica_logs, speech

SECRETS = (API_KEY, ADMIN_KEY, WEBHOOK_SECRET, "guest:guest")


def test_lines_about_a_job_carry_its_ids_and_nothing_secret(
    service: Service, speech_dir: Path, results: amqp.ResultCollector
) -> None:
    long_clip, _ = speech.four_minutes(speech_dir)  # in parts: model replicas log about it too
    attachment = 8 * 10**8 + time.time_ns() % 10**8
    request = {"attachment_id": attachment, "audio_file_path": str(long_clip)}
    key = c.job_key(QueuedTranscriptionRequest.model_validate(request))
    amqp.publish(RABBITMQ_URL, request)
    # The session's collector: a second consumer of whisper_results would share its messages.
    result = results.wait(attachment, 300)
    assert result["success"] is True

    def outcome_logged() -> bool:
        return any(
            line.get("job") == key and line.get("outcome")
            for lines in replica_logs.lines(service.pid).values()
            for line in lines
        )

    speech.wait_until(outcome_logged, 30, "the job's outcome line")
    logs = replica_logs.lines(service.pid)
    about = [
        (name, line) for name, lines in logs.items() for line in lines if line.get("job") == key
    ]
    for _, line in about:
        assert line["attachment_id"] == attachment and line["source"] == "amqp"
        assert line["attempt"] == 0 and line.get("replica"), sorted(line)  # the replica
    # Lines that name the job in their text carry its ids as keys too.
    named = [line for lines in logs.values() for line in lines if key in line["message"]]
    assert named and all(line.get("job") == key for line in named), named
    # The model replicas' lines about its parts, not only the Ingest's.
    files = {replica_logs.deployment(name) for name, _ in about}
    assert {"Ingest", "TranscriberCPU"} <= files, files
    [ended] = [line for _, line in about if line.get("outcome")]
    assert ended["outcome"] == "completed" and ended["attempts"] == 1
    assert ended["run_s"] > 0 and ended["queue_wait_s"] >= 0 and ended["audio_s"] > 200

    # No key, secret or password, and not the transcript, in any log the service writes.
    words = result["texto"].split()
    phrase = " ".join(words[len(words) // 2 : len(words) // 2 + 6])
    texts = [p.read_text(errors="replace") for p in replica_logs.folder(service.pid).glob("*.log")]
    texts.append(service.log.read_text(errors="replace"))
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
        assert phrase not in text
