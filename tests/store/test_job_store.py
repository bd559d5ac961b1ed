"""The job store and its migrations against real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.exc import IntegrityError

from serve_app.errors import InvalidOptionError, JobNotFoundError, JobStateError
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.store import (
    JobStore,
    ResultLedger,
    RetentionStore,
    make_engine,
    migrate,
    open_engine,
)
from serve_app.store.db import current_revision
from serve_app.store.jobs import NewJob


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = open_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> JobStore:
    return JobStore(engine)


def _new(**kwargs: object) -> NewJob:
    values: dict[str, object] = {
        "source": "http",
        "audio_path": "/spool/a.mp3",
        "options": TranscribeOptions(model="tiny.en", language="en"),
        "model": "tiny.en",
        "spooled": True,
        "filename": "a.mp3",
    }
    values.update(kwargs)
    return NewJob(**values)  # type: ignore[arg-type]


def _transcript() -> Transcript:
    return Transcript(
        text="hello world",
        language="en",
        language_probability=1.0,
        duration=4.0,
        segments=[],
        model="tiny.en",
    )


def test_migrations_create_the_schema_and_are_idempotent(url: str) -> None:
    engine = open_engine(url)
    try:
        assert current_revision(engine) == "0007"
        tables = set(inspect(engine).get_table_names())
        assert {
            "jobs",
            "job_events",
            "job_units",
            "published_results",
            "replica_speeds",
            "alembic_version",
        } <= tables
        migrate(engine)  # a second replica starting finds nothing to do
        assert current_revision(engine) == "0007"
    finally:
        engine.dispose()


def test_replicas_migrating_at_once_apply_each_migration_once(url: str) -> None:
    errors: list[BaseException] = []

    def start_replica() -> None:
        try:
            open_engine(url).dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start_replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = make_engine(url)
    assert current_revision(engine) == "0007"
    engine.dispose()


def test_a_database_from_before_migrations_keeps_its_ledger(url: str) -> None:
    engine = make_engine(url)
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with engine.begin() as conn:  # what create_all made in the previous release
        conn.execute(
            text(
                "CREATE TABLE published_results (job_key VARCHAR(64) PRIMARY KEY, "
                "attachment_id BIGINT NOT NULL, message_id VARCHAR(128) NOT NULL, "
                "success BOOLEAN NOT NULL, published_at TIMESTAMP WITH TIME ZONE NOT NULL)"
            )
        )
        conn.execute(
            text("INSERT INTO published_results VALUES ('k1', 7, 'm', true, CURRENT_TIMESTAMP)")
        )
    migrate(engine)
    assert current_revision(engine) == "0007"
    assert ResultLedger(engine).was_published("k1")
    engine.dispose()


def test_a_job_goes_from_queued_to_completed_with_its_events(store: JobStore) -> None:
    job, created = store.create(_new())
    assert created and job.status == "queued" and job.queue_position == 1
    assert store.start(job.id) is not None
    store.record_progress(job.id, 30.0, 120.0)
    running = store.get(job.id)
    assert running.status == "running" and running.attempts == 1
    assert running.progress == 0.25 and running.queue_position is None
    store.record_segments(job.id, [{"start": 0.0, "end": 2.0, "text": "hello"}])
    assert store.complete(job.id, _transcript())
    done = store.get(job.id)
    assert done.status == "completed" and done.progress == 1.0
    assert done.result is not None and done.result.text == "hello world"
    assert done.finished_at is not None and done.finished_at >= done.created_at
    events = store.events_after(job.id)
    assert [e.type for e in events] == ["queued", "running", "progress", "segment", "completed"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    later = store.events_after(job.id, after=events[2].id)
    assert [e.type for e in later] == ["segment", "completed"]


def test_queue_position_counts_earlier_queued_jobs(store: JobStore) -> None:
    first, _ = store.create(_new())
    second, _ = store.create(_new())
    assert store.get(second.id).queue_position == 2
    store.start(first.id)
    assert store.get(second.id).queue_position == 1


def test_a_page_of_jobs_gets_every_owners_positions_in_one_query(
    store: JobStore, engine: Engine
) -> None:
    owners = ["a", "b", None, "a", "a", None, "b", "a"]
    created = [store.create(_new(owner=owner))[0] for owner in owners]
    store.start(created[3].id)  # the second of a's: the ones after it move up
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        page, _ = store.list_jobs(limit=20)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    listed = {job.id: job.queue_position for job in page}
    assert listed == {job.id: store.get(job.id).queue_position for job in created}
    assert [listed[job.id] for job in created] == [1, 1, 1, None, 2, 2, 2, 3]
    assert len(statements) == 2, statements  # the page, then the positions of all its owners


def test_idempotency_key_returns_the_same_job(store: JobStore) -> None:
    job, created = store.create(_new(idempotency_key="upload-42"))
    again, created_again = store.create(_new(idempotency_key="upload-42"))
    assert created and not created_again and again.id == job.id
    other, _ = store.create(_new(idempotency_key="upload-43"))
    assert other.id != job.id


def test_cancel_wins_over_a_late_completion(store: JobStore) -> None:
    job, _ = store.create(_new())
    store.start(job.id)
    assert store.cancel(job.id).status == "cancelled"
    assert not store.complete(job.id, _transcript())  # the runner finishing afterwards
    assert store.get(job.id).status == "cancelled"
    assert store.start(job.id) is None  # a redelivery of the message does nothing
    with pytest.raises(JobStateError):
        store.cancel(job.id)


def test_retry_goes_back_to_queued_then_fails(store: JobStore) -> None:
    job, _ = store.create(_new())
    store.start(job.id)
    store.requeue(job.id, "replica died")
    assert store.get(job.id).status == "queued"
    store.start(job.id)
    assert store.fail(job.id, "Failed after 2 attempts: replica died")
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.attempts == 2 and failed.error


def test_unknown_job_is_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError):
        store.get("nope")


def test_list_pages_newest_first_and_filters(store: JobStore) -> None:
    ids = [store.create(_new())[0].id for _ in range(5)]
    store.start(ids[0])
    page, cursor = store.list_jobs(limit=2)
    assert [j.id for j in page] == ids[::-1][:2] and cursor
    rest, end = store.list_jobs(limit=10, cursor=cursor)
    assert [j.id for j in rest] == ids[::-1][2:] and end is None
    running, _ = store.list_jobs(status="running")
    assert [j.id for j in running] == [ids[0]]
    with pytest.raises(InvalidOptionError):
        store.list_jobs(cursor="garbage!")


def test_retention_purges_finished_jobs_only(store: JobStore) -> None:
    done, _ = store.create(_new(audio_path="/spool/done.mp3"))
    store.start(done.id)
    store.complete(done.id, _transcript())
    waiting, _ = store.create(_new(audio_path="/spool/waiting.mp3"))
    retention = RetentionStore(store.engine)
    assert retention.purge_finished(timedelta(hours=1)) == []
    purged = retention.purge_finished(timedelta(seconds=0))
    assert [(p.id, p.audio_path) for p in purged] == [(done.id, "/spool/done.mp3")]
    assert store.find(done.id) is None and store.events_after(done.id) == []
    assert store.get(waiting.id).status == "queued"
    assert retention.spooled_paths() == {"/spool/waiting.mp3"}


def test_a_store_error_carries_no_values_into_logs(url: str) -> None:
    """An error's text named its statement's bound values: transcripts, prompts and file names
    reached the replica logs with it."""
    engine = open_engine(url)
    store = JobStore(engine)
    secret = "/private/ceo-layoffs-briefing.mp3"
    new = NewJob(source="http", audio_path=secret, options=TranscribeOptions(), model="m", id="x")
    store.create(new)
    with pytest.raises(IntegrityError) as raised:
        store.create(new)  # the same id again
    assert secret not in str(raised.value) and "hidden" in str(raised.value)
    engine.dispose()
