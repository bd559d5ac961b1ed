"""Claims (leases) on jobs, checkpoints of long jobs and the submit outbox, on SQLite and
PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import update

from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.store import Busy, Claim, ClaimStore, JobStore, Outbox, UnitStore
from serve_app.store.jobs import NewJob
from serve_app.store.rows import now
from serve_app.store.tables import jobs


def _new(store: JobStore, source: str = "http") -> str:
    job, _ = store.create(
        NewJob(source=source, audio_path="/a.mp3", options=TranscribeOptions(), model="m")  # type: ignore[arg-type]
    )
    return job.id


def test_one_holder_at_a_time_until_release_or_expiry(store: JobStore) -> None:
    claims = ClaimStore(store.engine)
    job_id = _new(store)
    first = claims.claim(job_id, "a", lease_s=30)
    assert isinstance(first, Claim) and first.status == "queued" and first.unfinished == 0
    busy = claims.claim(job_id, "b", lease_s=30)
    assert isinstance(busy, Busy) and 25 < busy.wait_s <= 30
    assert claims.renew(job_id, "a", 30) and not claims.renew(job_id, "b", 30)
    claims.release(job_id, "b")  # not b's to release
    assert isinstance(claims.claim(job_id, "b", 30), Busy)
    claims.release(job_id, "a")
    assert isinstance(claims.claim(job_id, "b", lease_s=0.5), Claim)
    time.sleep(0.7)  # b died: its lease runs out
    assert isinstance(claims.claim(job_id, "c", 30), Claim)
    assert claims.claim("no-such-job", "c", 30) is None


def test_unfinished_deliveries_are_counted_until_an_ending_is_recorded(store: JobStore) -> None:
    claims = ClaimStore(store.engine)
    job_id = _new(store)
    for expected in (0, 1, 2):
        claim = claims.claim(job_id, f"h{expected}", lease_s=0)
        assert isinstance(claim, Claim) and claim.unfinished == expected
        store.start(job_id)
    store.requeue(job_id, "replica died")  # an ending: the count starts over
    claim = claims.claim(job_id, "h", lease_s=0)
    assert isinstance(claim, Claim) and claim.unfinished == 0


def test_units_are_kept_once_and_dropped_when_the_job_ends(store: JobStore) -> None:
    units = UnitStore(store.engine)
    job_id = _new(store)
    part = Transcript(
        text="hi", language="en", language_probability=1, duration=1, segments=[], model="m"
    )
    units.save(job_id, (0, 16000), 1, part)
    units.save(job_id, (0, 16000), 2, part)  # a late duplicate: the first record stands
    units.save(job_id, (16000, 48000), 2, part)
    assert set(units.done(job_id)) == {(0, 16000), (16000, 48000)}
    assert units.attempts(job_id) == [((0, 16000), 1), ((16000, 48000), 2)]
    units.drop_results(job_id)
    assert units.done(job_id) == {} and len(units.attempts(job_id)) == 2


def test_the_outbox_lists_accepted_jobs_never_confirmed_on_the_broker(store: JobStore) -> None:
    outbox = Outbox(store.engine)
    sent, unsent, cancelled = _new(store), _new(store), _new(store)
    contract = _new(store, source="amqp")  # came from the broker: nothing to publish
    outbox.mark_enqueued(sent)
    store.cancel(cancelled)
    assert outbox.unsent(timedelta(seconds=30)) == []  # within the Gateway's grace
    with store.engine.begin() as conn:
        conn.execute(update(jobs).values(created_at=now() - timedelta(minutes=5)))
    assert outbox.unsent(timedelta(seconds=30)) == [unsent]
    assert contract not in outbox.unsent(timedelta(0))
