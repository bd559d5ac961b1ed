"""Fair shares between keys against the real app (tiny.en, the shared service's two CPU model
replicas and two Ingest replicas of four job slots): one key floods it with long jobs, and
another key's short request and short job go ahead of the flood's queued work."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import API_KEY, INGEST_REPLICAS, OTHER_KEY, WORKERS_COUNT, Service
from tests.support import speech, sse

SLOTS = INGEST_REPLICAS * WORKERS_COUNT
FLOOD_JOBS = SLOTS + 4  # four of them queued behind the slots
# Besides the batches it waits on (below), the quiet key's clip in the flood may take this much
# longer than alone: its decoding and its windows' planning on cores the flood keeps busy.
FLOODED_EXTRA_S = 5.0
BATCH_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Decoded a batch of \d+ windows .* in ([\d.]+) s"
)


def _sync(client: httpx.Client, clip: Path) -> float:
    started = time.monotonic()
    with open(clip, "rb") as f:
        answer = client.post("/v1/audio/transcriptions", files={"file": (clip.name, f)})
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


def _jobs(client: httpx.Client, ids: list[str]) -> list[dict[str, Any]]:
    return [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _batches_s(service: Service, start: datetime, end: datetime) -> list[float]:
    """How long each batch the model replicas decoded took, of those that ended between
    ``start`` and ``end`` (local times, as the replicas log them)."""
    found = (
        BATCH_LINE.search(line) for line in service.log.read_text(errors="replace").split("\n")
    )
    return [
        float(m[2])
        for m in found
        if m and start <= datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") <= end
    ]


def test_a_keys_flood_does_not_hold_back_another_keys_request_or_job(
    service: Service, speech_dir: Path, clip
) -> None:  # type: ignore[no-untyped-def]
    long_clip, _ = speech.four_minutes(speech_dir)
    short = clip("en_office", ".mp3")
    with service.client(api_key=API_KEY) as flood, service.client(api_key=OTHER_KEY) as quiet:
        alone = min(_sync(quiet, short) for _ in range(2))  # the first may load the model
        body = {"audio_file_path": str(long_clip), "language": "en"}
        ids = [flood.post("/v1/jobs", json=body).json()["id"] for _ in range(FLOOD_JOBS)]
        try:
            speech.wait_until(
                lambda: sum(j["status"] == "running" for j in _jobs(flood, ids)) >= SLOTS,
                90,
                "the flood to take every job slot",
            )
            # Its jobs' windows are decoding (not only their audio): the replicas are busy.
            speech.wait_until(
                lambda: any(j["progress"] > 0 for j in _jobs(flood, ids)),
                90,
                "the flood's first windows to be transcribed",
            )
            sent = datetime.now()
            flooded = _sync(quiet, short)
            answered = datetime.now()
            with open(short, "rb") as f:
                submitted = quiet.post(
                    "/v1/jobs", files={"file": (short.name, f)}, data={"language": "en"}
                )
            assert submitted.status_code == 202, submitted.text
            quiet_id = submitted.json()["id"]
            estimate = quiet.get(f"/v1/jobs/{quiet_id}").json()
            flood_then = _jobs(flood, ids)
            queued_then = [j["id"] for j in flood_then if j["status"] == "queued"]
            speech.wait_until(
                lambda: quiet.get(f"/v1/jobs/{quiet_id}").json()["status"] == "completed",
                120,
                "the quiet key's job to complete",
            )
            flood_now = _jobs(flood, ids)
        finally:
            for job_id in ids:
                flood.delete(f"/v1/jobs/{job_id}")
        quiet_job = quiet.get(f"/v1/jobs/{quiet_id}").json()
        events = [e.event for e in sse.read(quiet, f"/v1/jobs/{quiet_id}/events")]
        ended = _jobs(flood, ids)

    # Fair shares put the quiet clip's window in the first batch to start after it came: it
    # waits for at most the longest batch then decoding and for its own (FCFS: for every
    # window the flood's units had put in the replica before it).
    batches = _batches_s(service, sent, answered)
    assert batches, "no batch was decoded while the quiet key's clip waited"
    held_back = alone + 2 * max(batches) + FLOODED_EXTRA_S
    started = _at(quiet_job["started_at"])
    waited = (started - _at(quiet_job["created_at"])).total_seconds()
    print(
        f"fairness: quiet clip alone {alone:.1f} s, in the flood {flooded:.1f} s (at most "
        f"{held_back:.1f} s: {len(batches)} batches, the longest {max(batches):.1f} s); quiet job "
        f"started {waited:.1f} s after submission, {len(queued_then)} flood jobs queued before it"
    )
    assert flooded < held_back, (alone, flooded, batches)
    # The quiet key's job took the first free slot: before any of the flood's jobs that were
    # queued when it came (first come first served would have run those first).
    assert queued_then, "the flood did not queue past the slots"
    # Its estimate said as much: it starts before every one of the flood's queued jobs (first
    # come first served estimates put it after all of them), and not before it was submitted.
    if estimate["status"] == "queued":  # replicas report their speed from the start
        due = _at(estimate["estimated_start"])
        print(f"fairness: quiet job estimated to start {(due - started).total_seconds():+.1f} s")
        assert due >= _at(estimate["created_at"])
        for job in flood_then:
            if job["status"] == "queued" and job["estimated_start"] is not None:
                assert due <= _at(job["estimated_start"]), (estimate, job)
    for job in flood_now:
        if job["id"] in queued_then and job["started_at"] is not None:
            assert _at(job["started_at"]) > started, (job["id"], job["started_at"], started)
    # Nothing lost or duplicated: one transcript for the quiet job; the flood's jobs end
    # completed or cancelled, none failed.
    assert quiet_job["result"]["text"].strip()
    assert events.count("completed") == 1 and events.count("running") == 1, events
    assert {j["status"] for j in ended} <= {"completed", "cancelled"}
