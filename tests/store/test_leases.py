"""Leases on one clock, and writes fenced by the claim's holder, on SQLite and PostgreSQL.

A worker's skewed clock is injected by patching the store's notion of "now" in the worker
(the database keeps the true time): leases must not depend on it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from serve_app.schemas import TranscribeOptions, Transcript, WebhookAttempt
from serve_app.store import (
    Busy,
    Claim,
    ClaimStore,
    JobStore,
    Outbox,
    UnitStore,
    WebhookStore,
)
from serve_app.store.jobs import NewJob

SKEW_S = 41.0
_STORE_MODULES = ("claims", "jobs", "outbox", "rows", "units", "webhooks")


@pytest.fixture
def skew(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to run this worker's clock SKEW_S seconds ahead of the database's."""

    def ahead() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=SKEW_S)

    def apply() -> None:
        for name in _STORE_MODULES:
            module = importlib.import_module(f"serve_app.store.{name}")
            monkeypatch.setattr(module, "now", ahead, raising=False)

    return apply


def _new(store: JobStore, callback: str | None = None) -> str:
    job, _ = store.create(
        NewJob(
            source="http",
            audio_path="/a.mp3",
            options=TranscribeOptions(),
            model="m",
            callback_url=callback,
        )
    )
    return job.id


def test_a_node_ahead_does_not_take_a_live_job_lease(
    store: JobStore, skew: Callable[[], None]
) -> None:
    claims = ClaimStore(store.engine)
    job_id = _new(store)
    assert isinstance(claims.claim(job_id, "a", lease_s=30), Claim)
    skew()  # the next claim comes from a node 41 s ahead: it saw this lease as run out
    busy = claims.claim(job_id, "b", lease_s=30)
    assert isinstance(busy, Busy)
    assert 25 < busy.wait_s <= 30 and busy.holder == "a"
    assert claims.renew(job_id, "a", 30) and not claims.renew(job_id, "b", 30)


def test_a_node_ahead_does_not_take_a_live_webhook_lease(
    store: JobStore, skew: Callable[[], None]
) -> None:
    webhooks = WebhookStore(store.engine)
    job_id = _new(store, callback="http://127.0.0.1:9/hook")
    store.fail(job_id, "bad audio")
    [first] = webhooks.claim_due(timedelta(seconds=30))
    skew()
    assert webhooks.claim_due(timedelta(seconds=30)) == []  # leased, whatever our clock says
    attempt = WebhookAttempt(at=datetime.now(UTC), status_code=500)
    # A retry is due in 60 s of the database's time, not the worker's.
    assert webhooks.record_attempt(job_id, first.token, attempt, False, timedelta(seconds=60))
    assert webhooks.claim_due(timedelta(seconds=30)) == []


def test_the_outbox_judges_a_jobs_age_by_the_database_clock(
    store: JobStore, skew: Callable[[], None]
) -> None:
    job_id = _new(store)
    skew()  # the sweeper runs on a node 41 s ahead of the one that accepted the job
    outbox = Outbox(store.engine)
    assert outbox.unsent(timedelta(seconds=30)) == []  # just accepted, 41 s or not
    assert outbox.unsent(timedelta(0)) == [job_id]


def _transcript() -> Transcript:
    return Transcript(
        text="hi", language="en", language_probability=1, duration=1, segments=[], model="m"
    )


def test_a_stale_holder_changes_nothing(store: JobStore) -> None:
    """Every write after a claim names its holder: once the claim ran out and another
    delivery took it, the first one's writes are no-ops."""
    claims, units = ClaimStore(store.engine), UnitStore(store.engine)
    job_id = _new(store)
    assert isinstance(claims.claim(job_id, "stale", lease_s=0), Claim)
    assert store.start(job_id, "stale") is not None
    assert isinstance(claims.claim(job_id, "live", lease_s=30), Claim)  # the lease ran out
    events = len(store.events_after(job_id))

    assert store.start(job_id, "stale") is None
    store.record_progress(job_id, 1.0, 2.0, "stale")
    store.record_segments(job_id, [{"id": 0, "text": "stale"}], "stale")
    assert not units.save(job_id, (0, 16000), 1, _transcript(), "stale")
    assert not store.complete(job_id, _transcript(), "stale")
    assert not store.requeue(job_id, "stale failure", "stale")
    assert not store.give_back(job_id, "stale", "stopped")
    assert not store.fail(job_id, "stale failure", "stale")
    job = store.get(job_id)
    assert (job.status, job.processed_seconds, job.result) == ("running", 0.0, None)
    assert len(store.events_after(job_id)) == events and units.done(job_id) == {}

    store.record_segments(job_id, [{"id": 0, "text": "live"}], "live")
    assert units.save(job_id, (0, 16000), 1, _transcript(), "live")
    assert store.complete(job_id, _transcript(), "live")
    assert store.get(job_id).status == "completed"
    assert [e.type for e in store.events_after(job_id)][-2:] == ["segment", "completed"]
