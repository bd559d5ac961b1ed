"""Admission with an ETA against the real app: model replicas report their measured speed to the
store, queued and running jobs show when they should start and finish, and past the
service's MAX_BACKLOG_AUDIO_SEC the sync route answers 429 with Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import ADMIN_KEY, MAX_BACKLOG_AUDIO_SEC, Service
from tests.support import speech

LONG_JOBS = 10  # of 4 minutes: more than the job slots (two ingest replicas, four each)


def _sync(client: httpx.Client, clip: Path) -> httpx.Response:
    with open(clip, "rb") as f:
        return client.post("/v1/audio/transcriptions", files={"file": (clip.name, f)})


def _after(stamp: str | None, moment: datetime) -> float:
    assert stamp is not None
    return (datetime.fromisoformat(stamp) - moment).total_seconds()


def _backlog(service: Service) -> dict[str, Any]:
    backlog: dict[str, Any] = service.health()["backlog"]
    return backlog


def test_a_backlog_past_the_bound_is_refused_and_queued_jobs_get_estimates(
    service: Service, speech_dir: Path, clip
) -> None:  # type: ignore[no-untyped-def]
    long_clip, _ = speech.four_minutes(speech_dir)
    short = clip("en_office", ".mp3")
    # Every replica reports its speed from the start (the warm-up's, then measured).
    speeds = _backlog(service)["speed"]
    assert speeds and all(rate > 0 for rate in speeds.values()), speeds
    with service.client(api_key=ADMIN_KEY) as client:
        assert _sync(client, short).status_code == 200
        ids = [
            client.post("/v1/jobs", json={"audio_file_path": str(long_clip)}).json()["id"]
            for _ in range(LONG_JOBS)
        ]
        try:
            # Each job's length counts once its audio is decoded.
            speech.wait_until(
                lambda: _backlog(service)["audio_seconds"] > MAX_BACKLOG_AUDIO_SEC,
                60,
                "the jobs' audio to count in the backlog",
            )
            refused = _sync(client, short)
            asked = datetime.now(UTC)  # no estimate may be earlier than the question
            jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
        finally:
            for job_id in ids:
                client.delete(f"/v1/jobs/{job_id}")
        speech.wait_until(lambda: _sync(client, short).status_code == 200, 30, "taken again")

    assert refused.status_code == 429, refused.text
    wait = int(refused.headers["retry-after"])
    assert 1 <= wait < 600, wait
    assert "of audio behind" in refused.json()["error"]["message"]

    queued = [j for j in jobs if j["status"] == "queued"]
    running = [j for j in jobs if j["status"] == "running"]
    assert queued and running, [j["status"] for j in jobs]
    for job in running:  # one about done is due now
        assert job["estimated_start"] is None and _after(job["estimated_completion"], asked) >= 0
    starts = [_after(j["estimated_start"], asked) for j in queued]
    assert all(start >= 0 for start in starts)
    for job in queued:  # a queued job starts after the running ones and ends after it starts
        assert _after(job["estimated_completion"], asked) > _after(job["estimated_start"], asked)
    # Queued jobs start in their queue order.
    by_position = sorted(queued, key=lambda j: j["queue_position"])
    assert [j["id"] for j in by_position] == [
        j["id"] for j in sorted(queued, key=lambda j: j["estimated_start"])
    ]
    print(
        f"admission: backlog past {MAX_BACKLOG_AUDIO_SEC} s -> 429, Retry-After {wait} s; "
        f"speeds {speeds}; first queued job estimated to start in {min(starts):.0f} s"
    )
