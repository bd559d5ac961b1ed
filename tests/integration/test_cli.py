"""The `whisper-serve` command, as a person runs it, against the real app with real files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import ADMIN_KEY, API_KEY, AUDIO_BUCKET, RABBITMQ_URL, Service
from tests.support import amqp, speech
from tests.support.serve_process import free_port

CLI = Path(sys.executable).parent / "whisper-serve"
OFFICE = speech.reference("en_office")
THIRTY = speech.reference("en_thirty")


def _cli(
    service: Service, *args: str, key: str | None = API_KEY, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "WHISPER_SERVE_URL": service.url, "COLUMNS": "200"}
    if key:
        env["WHISPER_SERVE_API_KEY"] = key
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _srt_text(srt: str) -> str:
    lines = [
        line
        for line in srt.splitlines()
        if line.strip() and "-->" not in line and not line.strip().isdigit()
    ]
    return " ".join(lines)


def test_transcribe_writes_each_result_into_out_or_beside_its_file(
    service: Service, clip, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    office = shutil.copy(clip("en_office", ".mp3"), tmp_path / "office.mp3")
    thirty = shutil.copy(clip("en_thirty", ".ogg"), tmp_path / "thirty.ogg")
    out = tmp_path / "subtitles"
    run = _cli(service, "transcribe", str(office), str(thirty), "-f", "srt", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "office.mp3" in run.stderr and "thirty.ogg" in run.stderr  # the progress bars
    srt = (out / "office.srt").read_text()
    assert re.search(r"00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}", srt), srt
    assert speech.word_error_rate(OFFICE, _srt_text(srt)) < 0.25
    assert speech.word_error_rate(THIRTY, _srt_text((out / "thirty.srt").read_text())) < 0.25

    beside = _cli(service, "transcribe", str(office), "--language", "en")
    assert beside.returncode == 0, beside.stderr
    assert speech.word_error_rate(OFFICE, (tmp_path / "office.txt").read_text()) < 0.25

    # An existing result is kept (refused before anything is sent) unless --force.
    (tmp_path / "office.txt").write_text("my notes")
    kept = _cli(service, "transcribe", str(office), "--url", service.url)  # options after, too
    assert kept.returncode == 2 and "exists" in kept.stderr, kept.stderr
    assert (tmp_path / "office.txt").read_text() == "my notes"
    forced = _cli(service, "transcribe", str(office), "--force")
    assert forced.returncode == 0, forced.stderr
    assert speech.word_error_rate(OFFICE, (tmp_path / "office.txt").read_text()) < 0.25


def test_a_file_the_service_refuses_fails_alone(service: Service, clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = shutil.copy(clip("en_office", ".mp3"), tmp_path / "good.mp3")
    bad = tmp_path / "bad.mp3"
    bad.write_text("not audio at all, " * 100)
    run = _cli(service, "transcribe", str(good), str(bad), "-f", "json")
    assert run.returncode == 1, run.stderr
    assert json.loads((tmp_path / "good.json").read_text())["text"]
    assert not (tmp_path / "bad.json").exists()
    # Taken as a job (its name and size pass), then failed when decoded.
    assert re.search(r"failed \S*bad\.mp3: Cannot decode audio", " ".join(run.stderr.split()))


def test_unreachable_service_and_missing_key_get_plain_messages(
    service: Service, clip, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    office = clip("en_office", ".mp3")
    down = subprocess.run(
        [str(CLI), "--url", f"http://127.0.0.1:{free_port()}", "transcribe", str(office)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 2
    assert "Cannot reach the service" in down.stderr and "Traceback" not in down.stderr
    keyless = _cli(service, "jobs", "list", key=None)
    assert keyless.returncode == 1 and "--api-key" in " ".join(keyless.stderr.split())
    missing = _cli(service, "transcribe", str(tmp_path / "nope.mp3"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    broker = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    no_broker = _cli(service, "publish", "--amqp-url", broker, str(office))
    assert no_broker.returncode == 2 and "Cannot reach RabbitMQ" in no_broker.stderr
    assert "guest:guest" not in no_broker.stderr and "Traceback" not in no_broker.stderr


def test_jobs_and_health(service: Service, clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    office = shutil.copy(clip("en_office", ".mp3"), tmp_path / "listed.mp3")
    assert _cli(service, "transcribe", str(office)).returncode == 0
    listing = _cli(service, "jobs", "list", "--status", "completed", "--limit", "100", "--json")
    assert listing.returncode == 0, listing.stderr
    jobs = [json.loads(line) for line in listing.stdout.splitlines()]
    [job_id] = [job["id"] for job in jobs if job["filename"] == "listed.mp3"]
    table = _cli(service, "jobs", "list")
    assert table.returncode == 0 and "listed.mp3" in table.stdout
    shown = _cli(service, "jobs", "show", job_id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["filename"] == "listed.mp3"
    again = _cli(service, "jobs", "cancel", job_id)
    assert again.returncode == 1 and "409" in again.stderr  # finished: nothing to cancel
    health = _cli(service, "health")
    assert health.returncode == 0, health.stdout
    assert json.loads(health.stdout)["status"] == "ok"


def test_publish_and_wait_prints_the_text_and_answers_the_queue_once(
    service: Service, clip, results
) -> None:  # type: ignore[no-untyped-def]
    office = clip("en_office", ".flac")  # under the service's ALLOWED_AUDIO_ROOTS
    run = _cli(service, "publish", "--wait", "--amqp-url", RABBITMQ_URL, str(office), key=ADMIN_KEY)
    assert run.returncode == 0, run.stderr
    assert speech.word_error_rate(OFFICE, run.stdout) < 0.25, run.stdout
    attachment = int(re.findall(r"attachment_id (\d+)", run.stderr)[0])
    # The result still went to whisper_results, for the consumers that wait for it.
    assert results.wait(attachment, 60)["success"] is True
    assert len(results.all(attachment)) == 1
    assert amqp.queue_depth(RABBITMQ_URL, "whisper_transcriptions")[0] == 0


def test_publish_names_an_object_in_the_services_bucket(service: Service, clip, results) -> None:  # type: ignore[no-untyped-def]
    key = f"cli/{time.time_ns()}.flac"
    service.storage.client().upload_file(str(clip("en_office", ".flac")), AUDIO_BUCKET, key)
    source = f"s3://{AUDIO_BUCKET}/{key}"
    run = _cli(service, "publish", "--wait", "--amqp-url", RABBITMQ_URL, source, key=ADMIN_KEY)
    assert run.returncode == 0, run.stderr
    assert f"published {source}" in run.stderr
    assert speech.word_error_rate(OFFICE, run.stdout) < 0.25, run.stdout
    attachment = int(re.findall(r"attachment_id (\d+)", run.stderr)[0])
    assert results.wait(attachment, 60)["result_objects"]["json"].endswith("/result.json")
    hostile = _cli(
        service, "publish", "--amqp-url", RABBITMQ_URL, f"s3://{AUDIO_BUCKET}/a/../b.mp3"
    )
    assert hostile.returncode != 0 and "segment" in hostile.stderr
