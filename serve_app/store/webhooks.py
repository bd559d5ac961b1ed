"""Webhook deliveries in the job store: due jobs are leased, attempts recorded under the lease.

A claim writes a lease into ``webhook_next_at`` (by the database's clock, which every replica
shares) and hands that value back as the token. An
attempt is recorded only while the webhook is still pending and still holds that token, so a
delivery that outlived its lease (another replica has claimed the job since) or one racing a
recorded ``delivered`` changes nothing. Calls are blocking: run them in a thread from async
code.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, select, update
from sqlalchemy.engine import Connection

from serve_app.schemas import Job, WebhookAttempt
from serve_app.store.clock import DbClock
from serve_app.store.jobs import JobStore
from serve_app.store.rows import aware, now
from serve_app.store.tables import jobs


@dataclass(frozen=True)
class WebhookClaim:
    job: Job
    # The lease written on claim; recording an attempt needs it.
    token: datetime
    owner: str | None = None  # the job's API key (a hash), whose host lookups this counts as


class WebhookStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._jobs = JobStore(engine)
        self._clock = DbClock(engine)

    def claim_due(
        self, lease: timedelta, limit: int = 10, exclude: Collection[str] = ()
    ) -> list[WebhookClaim]:
        """Finished jobs whose webhook is due, each leased until now + lease so other
        replicas skip it; ``exclude`` names jobs this caller is still delivering. Due and
        lease are by the database's clock."""
        if limit <= 0:
            return []
        query = (
            select(jobs.c.id, jobs.c.webhook_next_at, jobs.c.owner)
            .where(jobs.c.webhook_status == "pending", jobs.c.webhook_next_at <= self._clock.now())
            .order_by(jobs.c.webhook_next_at)
            .limit(limit)
        )
        if exclude:
            query = query.where(jobs.c.id.not_in(list(exclude)))
        with self._engine.connect() as conn:
            due = conn.execute(query).all()
        claims = []
        for job_id, next_at, owner in due:
            token = self._take(job_id, next_at, lease)
            if token is not None:
                claims.append(WebhookClaim(self._jobs.get(job_id), token, owner))
        return claims

    def _take(self, job_id: str, seen: datetime, lease: timedelta) -> datetime | None:
        # Conditional on the value read: of replicas racing for one job, one wins, and gets
        # the lease the database wrote back as its token.
        with self._engine.begin() as conn:
            won = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.webhook_status == "pending",
                    jobs.c.webhook_next_at == seen,
                )
                .values(webhook_next_at=self._clock.later(lease.total_seconds()))
                .returning(jobs.c.webhook_next_at)
            ).first()
        return None if won is None else aware(won[0])

    def record_attempt(
        self,
        job_id: str,
        token: datetime,
        attempt: WebhookAttempt,
        delivered: bool,
        retry_in: timedelta | None,
    ) -> bool:
        """Append the attempt and set the outcome: delivered, pending until retry_in from now
        (the database's), or failed. Returns False, changing nothing, once the lease is lost or
        the webhook is no longer pending."""
        held = (
            jobs.c.id == job_id,
            jobs.c.webhook_status == "pending",
            jobs.c.webhook_next_at == token,
        )
        retry_at = None if retry_in is None else self._clock.later(retry_in.total_seconds())
        with self._engine.begin() as conn:
            current = _attempts_if_held(conn, held)
            if current is None:
                return False
            status = "delivered" if delivered else "pending" if retry_at is not None else "failed"
            applied = conn.execute(
                update(jobs)
                .where(*held)
                .values(
                    webhook_attempts=[*current, attempt.model_dump(mode="json")],
                    webhook_status=status,
                    webhook_next_at=None if delivered else retry_at,
                    updated_at=now(),
                )
            ).rowcount
        return bool(applied)


def _attempts_if_held(
    conn: Connection, held: tuple[ColumnElement[bool], ...]
) -> list[object] | None:
    # FOR UPDATE (PostgreSQL) keeps the appended list from racing another writer.
    row = conn.execute(select(jobs.c.webhook_attempts).where(*held).with_for_update()).first()
    return None if row is None else list(row.webhook_attempts or [])
