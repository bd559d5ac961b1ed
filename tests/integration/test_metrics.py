"""The service's own metrics, read back from Ray's Prometheus endpoint after known work: two sync
requests, an HTTP job, an AMQP job, a message nobody can answer, a file that cannot be decoded."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from serve_app.metrics import CATALOG
from tests.integration.conftest import ADMIN_KEY, INGEST_REPLICAS, RABBITMQ_URL, Service
from tests.support import amqp, dashboard, ray_metrics, speech
from tests.support.ray_metrics import Sample, total
from tests.support.webhook_server import webhook_server

OFFICE_S = 12.7  # en_office's length, about

# What Ray's endpoint calls them (it prefixes application metrics with ray_).
JOBS = "ray_whisper_jobs_total"
AUDIO = "ray_whisper_audio_seconds_total"
WALL_COUNT = "ray_whisper_transcription_seconds_count"
RTF_COUNT = "ray_whisper_real_time_factor_count"
WAIT_COUNT = "ray_whisper_queue_wait_seconds_count"
PARKED = "ray_whisper_parked_messages_total"
DECODE_FAILURES = "ray_whisper_decode_failures_total"
WEBHOOKS = "ray_whisper_webhook_deliveries_total"
# Counted only when it happens; retries are made in the fault tests, not here.
NOT_MADE_HERE = {"whisper_job_retries_total"}


def _wait_for(
    session: Path, check: Callable[[list[Sample]], bool], what: str, timeout: float = 90
) -> list[Sample]:
    """Ray exports every few seconds: poll until ``check`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        samples = ray_metrics.scrape(session)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, f"metrics: {what} not seen in {timeout:.0f} s"
        time.sleep(2)


def test_known_work_shows_in_the_metrics(service: Service, clip, results, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    session = ray_metrics.session_dir(service.pid)
    before = _wait_for(
        session, lambda s: "ray_whisper_broker_connected" in ray_metrics.names(s), "a first export"
    )
    office = clip("en_office", ".mp3")
    bad = tmp_path / "broken.mp3"
    bad.write_text("not audio at all, " * 100)
    with service.client(api_key=ADMIN_KEY) as client:
        for _ in range(2):
            with open(office, "rb") as f:
                sync = client.post("/v1/audio/transcriptions", files={"file": ("a.mp3", f)})
            assert sync.status_code == 200, sync.text
        with open(bad, "rb") as f:
            refused = client.post("/v1/audio/transcriptions", files={"file": ("b.mp3", f)})
        assert refused.status_code == 415
        with webhook_server([500, 200]) as receiver:  # one retry, then delivered
            job = client.post(
                "/v1/jobs", json={"audio_file_path": str(office), "callback_url": receiver.url}
            ).json()
            speech.wait_until(lambda: len(receiver.received) >= 2, 120, "the webhook")
        attachment = 7 * 10**8 + time.time_ns() % 10**8
        request = {"attachment_id": attachment, "audio_file_path": str(office)}
        amqp.publish(RABBITMQ_URL, request)
        amqp.publish(RABBITMQ_URL, b"not json at all")  # parked
        assert results.wait(request["attachment_id"], 120)["success"] is True
        speech.wait_until(
            lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "completed",
            120,
            "the HTTP job",
        )

    def grew(name: str, by: float, **labels: str) -> Callable[[list[Sample]], bool]:
        return lambda s: total(s, name, **labels) >= total(before, name, **labels) + by

    checks = {
        "jobs by source and outcome": lambda s: (
            grew(JOBS, 1, source="http", outcome="completed")(s)
            and grew(JOBS, 1, source="amqp", outcome="completed")(s)
        ),
        # Two sync requests and two jobs of en_office: about 50 s of audio.
        "audio seconds": grew(AUDIO, 3.5 * OFFICE_S, model="tiny.en", device="cpu"),
        "wall time and real-time factor": lambda s: (
            grew(WALL_COUNT, 4)(s) and grew(RTF_COUNT, 4)(s)
        ),
        "queue wait": grew(WAIT_COUNT, 2),
        "parked message": grew(PARKED, 1),
        "decode failure": grew(DECODE_FAILURES, 1, stage="audio"),
        "webhook deliveries": lambda s: (
            grew(WEBHOOKS, 1, outcome="retry")(s) and grew(WEBHOOKS, 1, outcome="delivered")(s)
        ),
    }
    after: list[Sample] = []
    for what, check in checks.items():
        after = _wait_for(session, check, what)

    # Gauges: each ingest replica is connected; the backlog and pool speed are exported.
    connected = [s for s in after if s.name == "ray_whisper_broker_connected"]
    assert len(connected) >= INGEST_REPLICAS and all(s.value == 1 for s in connected), connected
    speeds = [s for s in after if s.name == "ray_whisper_pool_speed"]
    assert speeds and all(s.value > 0 for s in speeds), speeds
    assert "ray_whisper_backlog_audio_seconds" in ray_metrics.names(after)
    assert total(after, "ray_whisper_model_load_seconds_count", model="tiny.en") >= 1
    assert total(after, "ray_whisper_batch_windows_count") > 0
    # Tagged with the replica by Ray Serve; never with a job id.
    series = [s for s in after if s.name.startswith("ray_whisper_")]
    assert all("deployment" in s.labels for s in series)
    allowed = {"deployment", "replica", "application", "le", "Component", "SessionName"}
    allowed |= {"NodeAddress", "Version", "JobId", "WorkerId"}
    for s in series:
        ours = {k for k in s.labels if not k.startswith("otel_scope_")} - allowed
        assert ours <= {k for m in CATALOG.values() for k in m.labels}, (s.name, s.labels)
    # Every series the shipped Grafana dashboard queries is exported (ours under ray_).
    exported = ray_metrics.names(after)
    for name in dashboard.metric_names() - NOT_MADE_HERE:
        assert (name if name.startswith("ray_") else f"ray_{name}") in exported, name
