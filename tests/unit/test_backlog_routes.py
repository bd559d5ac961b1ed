"""Admission by backlog and the jobs' estimates, in-process: the real FastAPI app, a real SQLite
store holding jobs and replica speeds, and a stand-in for the model side."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from serve_app.capacity import backlog as backlog_module
from serve_app.capacity.backlog import Backlog
from serve_app.capacity.fair import ANYONE
from serve_app.errors import BacklogFullError
from serve_app.schemas import Transcript
from serve_app.store import BacklogStore
from tests.support.api_standin import ADMIN, KEY_A, KEY_B, StandIn, client

RATE = 10.0  # audio seconds a second, the one replica reported below


@pytest.fixture
def speeds(backend: StandIn) -> BacklogStore:
    speeds = BacklogStore(backend.store.engine)
    speeds.report("r1", "TranscriberCPU", "cpu", "tiny.en", RATE, busy=True)
    return speeds


def _path_job(backend: StandIn) -> dict[str, object]:
    return {"audio_file_path": str(backend.settings.allowed_audio_roots[0] / "a.mp3")}


def _seconds_from_now(stamp: str) -> float:
    return (datetime.fromisoformat(stamp) - datetime.now(UTC)).total_seconds()


async def test_sync_routes_answer_429_with_retry_after_past_the_bound(
    backend: StandIn, speeds: BacklogStore, clip
) -> None:  # type: ignore[no-untyped-def]
    backend.backlog.bound_s = 100
    data = clip("en_office", ".mp3").read_bytes()
    backend.release.set()
    async with client(backend, ADMIN) as c:
        # Two queued jobs, not decoded yet: a minute each until one has finished.
        jobs = [(await c.post("/v1/jobs", json=_path_job(backend))).json() for _ in range(2)]
        refused = await c.post("/v1/audio/transcriptions", files={"file": ("a.mp3", data)})
        translation = await c.post("/v1/audio/translations", files={"file": ("a.mp3", data)})
        await c.delete(f"/v1/jobs/{jobs[0]['id']}")
        taken = await c.post("/v1/audio/transcriptions", files={"file": ("a.mp3", data)})
    assert refused.status_code == 429, refused.text
    # 120 s waiting, 100 let in, 10 a second: back under the bound in 2 s.
    assert refused.headers["retry-after"] == "2"
    assert "120 s of audio behind" in refused.json()["error"]["message"]
    assert translation.status_code == 429
    assert taken.status_code == 200, taken.text


async def test_one_keys_backlog_holds_back_that_key_and_the_total_bound_everyone(
    backend: StandIn, speeds: BacklogStore, clip
) -> None:  # type: ignore[no-untyped-def]
    backend.backlog.bound_s = 100
    data = clip("en_office", ".mp3").read_bytes()
    files = {"file": ("a.mp3", data)}
    backend.release.set()
    async with client(backend, KEY_A) as a, client(backend, KEY_B) as b:
        for _ in range(2):  # 120 s of key A's audio, queued
            assert (await a.post("/v1/jobs", json=_path_job(backend))).status_code == 202
        refused = await a.post("/v1/audio/transcriptions", files=files)
        other_key = await b.post("/v1/audio/transcriptions", files=files)
        async with client(backend, ADMIN) as admin:
            admin_key = await admin.post("/v1/audio/transcriptions", files=files)
        backend.backlog.total_bound_s = 100  # everyone's 120 s are past the last guard
        everyone = await b.post("/v1/audio/transcriptions", files=files)
    assert refused.status_code == 429, refused.text
    assert "This API key's work is 120 s of audio behind" in refused.json()["error"]["message"]
    assert other_key.status_code == admin_key.status_code == 200
    assert everyone.status_code == 429
    assert "The service is 120 s of audio behind" in everyone.json()["error"]["message"]


async def test_sync_requests_in_flight_count_toward_the_backlog(
    backend: StandIn, speeds: BacklogStore, clip
) -> None:  # type: ignore[no-untyped-def]
    backend.backlog.bound_s = 10  # less than one en_office
    data = clip("en_office", ".mp3").read_bytes()
    async with client(backend) as c:
        first = asyncio.create_task(
            c.post("/v1/audio/transcriptions", files={"file": ("a.mp3", data)})
        )
        await asyncio.wait_for(backend.transcribing.wait(), 30)
        second = await c.post("/v1/audio/transcriptions", files={"file": ("a.mp3", data)})
        backend.release.set()
        assert (await first).status_code == 200
        third = await c.post("/v1/audio/transcriptions", files={"file": ("a.mp3", data)})
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert third.status_code == 200  # the first one is done: nothing waits


async def test_a_bound_of_zero_lets_everything_in(
    backend: StandIn, speeds: BacklogStore, clip
) -> None:  # type: ignore[no-untyped-def]
    backend.backlog.bound_s = 0
    backend.release.set()
    data = clip("en_office", ".mp3").read_bytes()
    async with client(backend, ADMIN) as c:
        for _ in range(3):
            await c.post("/v1/jobs", json=_path_job(backend))
        answer = await c.post("/v1/audio/transcriptions", files={"file": ("a.mp3", data)})
    assert answer.status_code == 200


async def test_queued_jobs_show_estimates_that_follow_the_work_ahead(
    backend: StandIn, speeds: BacklogStore
) -> None:
    store = backend.store
    async with client(backend, ADMIN) as c:
        running = (await c.post("/v1/jobs", json=_path_job(backend))).json()
        store.start(running["id"])
        store.record_progress(running["id"], 40.0, 100.0)  # 60 s left: 6 s at 10 a second
        submitted = await c.post("/v1/jobs", json=_path_job(backend))
        queued = submitted.json()
        # Not decoded yet: a minute of audio, 6 s more, once the running one is done.
        assert queued["estimated_start"] is not None, queued
        assert _seconds_from_now(queued["estimated_start"]) == pytest.approx(6, abs=1.5)
        assert _seconds_from_now(queued["estimated_completion"]) == pytest.approx(12, abs=1.5)
        listed = {j["id"]: j for j in (await c.get("/v1/jobs")).json()["data"]}
        ahead = listed[running["id"]]
        assert ahead["estimated_start"] is None  # running: started_at says when
        assert _seconds_from_now(ahead["estimated_completion"]) == pytest.approx(6, abs=1.5)

        store.record_progress(running["id"], 90.0, 100.0)  # work done: the queue moves up
        moved = (await c.get(f"/v1/jobs/{queued['id']}")).json()
        assert _seconds_from_now(moved["estimated_start"]) == pytest.approx(1, abs=1.5)

        transcript = Transcript(
            text="x", language="en", language_probability=1, duration=100, segments=[], model="m"
        )
        store.complete(running["id"], transcript)
        done = (await c.get(f"/v1/jobs/{running['id']}")).json()
    assert done["estimated_start"] is None and done["estimated_completion"] is None


async def test_without_a_measured_speed_jobs_carry_no_estimates(backend: StandIn) -> None:
    async with client(backend, ADMIN) as c:
        job = (await c.post("/v1/jobs", json=_path_job(backend))).json()
    assert job["status"] == "queued" and job["estimated_start"] is None


async def test_requests_in_flight_count_afresh_while_the_store_read_is_cached(
    backend: StandIn, speeds: BacklogStore
) -> None:
    in_flight: list[tuple[float, str]] = []
    backlog = Backlog(speeds, bound_s=100, in_flight=lambda: in_flight, ttl_s=3600)
    await backlog.admit()  # reads the store once; that read is kept for the hour
    in_flight.extend([(80.0, ANYONE), (80.0, ANYONE)])
    with pytest.raises(BacklogFullError):
        await backlog.admit()
    in_flight.clear()  # both answered: the next request is let in without a store read
    await backlog.admit()
    snap = await backlog.snapshot()
    assert snap.backlog_s == 0 and snap.rate == RATE


async def test_an_estimate_from_a_cached_snapshot_is_never_in_the_past(
    backend: StandIn, speeds: BacklogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.store
    async with client(backend, ADMIN) as c:
        job = (await c.post("/v1/jobs", json=_path_job(backend))).json()
    store.start(job["id"])
    store.record_progress(job["id"], 100.0, 100.0)  # every second decoded, not yet answered
    backlog = Backlog(speeds, bound_s=100, in_flight=list, ttl_s=3600)
    [first] = (await backlog.estimates([job["id"]])).values()
    later = first.completion + timedelta(seconds=5)  # the snapshot is 5 s old by then
    monkeypatch.setattr(backlog_module, "now", lambda: later)
    [cached] = (await backlog.estimates([job["id"]])).values()
    assert cached.start == later and cached.completion == later  # due now


async def test_estimates_count_the_replicas_serve_is_bringing_up(
    backend: StandIn, speeds: BacklogStore
) -> None:
    """The autoscaling asked for three CPU replicas; one has reported its speed so far: the
    estimates use its speed for all three, so a client sees the scale-up at once."""
    store = backend.store
    async with client(backend, ADMIN) as c:
        job = (await c.post("/v1/jobs", json=_path_job(backend))).json()
    store.start(job["id"])
    store.record_progress(job["id"], 0.0, 600.0)  # ten minutes of audio, none done
    asked = {"TranscriberCPU": 1}
    backlog = Backlog(speeds, bound_s=0, in_flight=list, ttl_s=3600, asked=lambda: dict(asked))
    [alone] = (await backlog.estimates([job["id"]])).values()
    asked["TranscriberCPU"] = 3
    [scaled] = (await backlog.estimates([job["id"]])).values()
    assert (await backlog.snapshot()).rate == 3 * RATE
    assert (alone.completion - alone.start).total_seconds() == pytest.approx(60, abs=1)
    assert (scaled.completion - scaled.start).total_seconds() == pytest.approx(20, abs=1)
