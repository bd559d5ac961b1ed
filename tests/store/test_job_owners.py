"""Owners, per-owner usage and the 0002 -> 0003 migration, on real SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select, text

from serve_app.errors import JobNotFoundError
from serve_app.schemas import TranscribeOptions
from serve_app.store import JobStore, make_engine, migrate, open_engine, service_secret
from serve_app.store.db import current_revision
from serve_app.store.jobs import NewJob, Viewer
from serve_app.store.tables import jobs


def _new(owner: str | None, size: int | None = 100, source: str = "http") -> NewJob:
    return NewJob(
        source=source,  # type: ignore[arg-type]
        audio_path="/spool/a.mp3",
        options=TranscribeOptions(),
        model="tiny.en",
        owner=owner,
        audio_bytes=size,
    )


def test_jobs_are_seen_by_their_owner_and_by_everyone_only(url: str) -> None:
    store = JobStore(open_engine(url))
    mine, _ = store.create(_new("a"))
    theirs, _ = store.create(_new("b"))
    amqp, _ = store.create(_new(None, source="amqp"))
    a, b = Viewer("a", everyone=False), Viewer("b", everyone=False)
    assert store.get(mine.id, viewer=a).id == mine.id
    for viewer, job_id in ((b, mine.id), (a, theirs.id), (a, amqp.id)):
        with pytest.raises(JobNotFoundError):
            store.get(job_id, viewer=viewer)
        with pytest.raises(JobNotFoundError):
            store.cancel(job_id, viewer)
    assert [j.id for j in store.list_jobs(viewer=a)[0]] == [mine.id]
    assert {j.id for j in store.list_jobs()[0]} == {mine.id, theirs.id, amqp.id}
    assert store.status(mine.id) == "queued"  # the refused cancels changed nothing


def test_usage_counts_unfinished_http_jobs_and_their_bytes(url: str) -> None:
    store = JobStore(open_engine(url))
    first, _ = store.create(_new("a", 100))
    store.create(_new("a", 250))
    store.create(_new("a", None))  # a job on a path: nothing spooled
    store.create(_new("b", 999))
    store.create(_new(None, 5000, source="amqp"))
    assert store.usage("a") == (3, 350)
    store.cancel(first.id)
    assert store.usage("a") == (2, 250)
    assert store.usage(None) == (0, 0)  # AMQP jobs do not count against the keyless owner


def test_migration_scopes_existing_idempotency_keys(url: str) -> None:
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    migrate(engine, "0002")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, source, status, idempotency_key, options, audio_path, "
                "spooled, model, attempts, processed_s, created_at, updated_at) VALUES "
                "('j1', 'http', 'queued', 'client-key', '{}', '/a.mp3', false, 'm', 0, 0, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), "
                "('j2', 'amqp', 'queued', 'amqp:abc', '{}', '/b.mp3', false, 'm', 0, 0, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    migrate(engine)
    assert current_revision(engine) == "0007"
    with engine.connect() as conn:
        keys = dict(conn.execute(select(jobs.c.id, jobs.c.idempotency_key)).all())
        owners = {row.owner for row in conn.execute(select(jobs.c.owner))}
        # 0004: jobs from before the outbox count as published, so no sweeper sends them again.
        unsent = conn.execute(select(jobs.c.id).where(jobs.c.enqueued_at.is_(None))).all()
    assert unsent == []
    assert keys == {"j1": "http:-:" + hashlib.sha256(b"client-key").hexdigest(), "j2": "amqp:abc"}
    assert owners == {None}
    engine.dispose()


def test_the_owner_id_secret_is_made_once_per_store(url: str, tmp_path: Path) -> None:
    first = open_engine(url)
    again = open_engine(url)  # another replica opening the same store
    other = open_engine(f"sqlite:///{tmp_path / 'other' / 'whisper.db'}")
    try:
        secret = service_secret(first)
        assert len(secret) == 64 and service_secret(again) == secret
        assert service_secret(other) != secret
    finally:
        for engine in (first, again, other):
            engine.dispose()


def test_queue_places_are_counted_per_owner(url: str) -> None:
    store = JobStore(open_engine(url))
    try:
        owners = ["a", "b", "a", None, "b"]
        made = [store.create(_new(owner))[0].id for owner in owners]
        places = [store.get(job_id).queue_position for job_id in made]
        assert places == [1, 1, 2, 1, 2]
    finally:
        store.engine.dispose()
