"""What the service has left to do, and how fast its pools do it: the inputs of admission and
of the jobs' estimates (``serve_app.capacity.eta``). Calls are blocking: run them in a thread.

- Work: every queued or running job, by audio seconds not yet transcribed. A job whose audio
  is not decoded yet counts as long as the typical finished job.
- Speed: each model replica reports its measured rate every few seconds; a pool's capacity
  is the sum over the replicas heard from within ``fresh_s``, so a lost node's replicas stop
  counting by themselves. A replica without a figure yet counts as its pool's average.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.capacity.eta import Pending
from serve_app.capacity.fair import tenant_of
from serve_app.store.rows import aware, now
from serve_app.store.tables import jobs, replica_speeds

# Until a job has finished here, an undecoded one counts as a minute of audio.
UNKNOWN_DURATION_S = 60.0
_TYPICAL_OF = 50  # finished jobs the typical duration is taken from
_FORGET_AFTER = timedelta(hours=1)  # rows of replicas long gone


@dataclass(frozen=True)
class PoolSpeed:
    pool: str
    replicas: int  # heard from lately
    rate: float  # audio seconds per second, the pool's replicas together; 0 when unknown
    busy: int  # replicas with work in flight


class BacklogStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # --- speed ----------------------------------------------------------------------------------

    def report(
        self, replica: str, pool: str, device: str, model: str, rate: float | None, busy: bool
    ) -> None:
        values = {
            "pool": pool,
            "device": device,
            "model": model,
            "rate": rate,
            "busy": busy,
            "reported_at": now(),
        }
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(replica_speeds).where(replica_speeds.c.replica == replica).values(**values)
            ).rowcount
            if not changed:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(replica_speeds).values(replica=replica, **values))
                except IntegrityError:  # its previous report landed meanwhile
                    conn.execute(
                        update(replica_speeds)
                        .where(replica_speeds.c.replica == replica)
                        .values(**values)
                    )
            conn.execute(
                delete(replica_speeds).where(replica_speeds.c.reported_at < now() - _FORGET_AFTER)
            )

    def forget(self, replica: str) -> None:
        """A replica shutting down: its capacity goes with it at once."""
        with self._engine.begin() as conn:
            conn.execute(delete(replica_speeds).where(replica_speeds.c.replica == replica))

    def capacity(self, fresh_s: float = 30.0) -> dict[str, PoolSpeed]:
        since = now() - timedelta(seconds=fresh_s)
        query = select(replica_speeds.c.pool, replica_speeds.c.rate, replica_speeds.c.busy)
        with self._engine.connect() as conn:
            rows = conn.execute(query.where(replica_speeds.c.reported_at >= since)).all()
        pools: dict[str, list[tuple[float | None, bool]]] = {}
        for pool, rate, busy in rows:
            pools.setdefault(pool, []).append((rate, bool(busy)))
        speeds = {}
        for pool, replicas in pools.items():
            known = [rate for rate, _ in replicas if rate]
            average = sum(known) / len(known) if known else 0.0
            speeds[pool] = PoolSpeed(
                pool=pool,
                replicas=len(replicas),
                rate=average * len(replicas),
                busy=sum(busy for _, busy in replicas),
            )
        return speeds

    # --- work -----------------------------------------------------------------------------------

    def tenant_load(self, queued_since: datetime) -> tuple[dict[str, int], set[str]]:
        """Jobs running by tenant, and the tenants with a job queued and on its way to a
        worker: queued (or requeued) since ``queued_since``, and on the broker (an AMQP job
        came from it; an HTTP job's message was confirmed). Older queued jobs are not waited
        for: their message may be lost for a while (the outbox sends it again)."""
        live = jobs.c.enqueued_at.is_not(None)  # an AMQP job's is when it was admitted
        query = (
            select(jobs.c.owner, jobs.c.source, jobs.c.status, func.count())
            .where(
                or_(
                    jobs.c.status == "running",
                    and_(jobs.c.status == "queued", jobs.c.updated_at >= queued_since, live),
                )
            )
            .group_by(jobs.c.owner, jobs.c.source, jobs.c.status)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        running: dict[str, int] = {}
        queued: set[str] = set()
        for owner, source, status, count in rows:
            tenant = tenant_of(owner, source).id
            if status == "running":
                running[tenant] = running.get(tenant, 0) + int(count)
            else:
                queued.add(tenant)
        return running, queued

    def pending(self, typical_s: float | None = None) -> list[Pending]:
        """Unfinished jobs: the running ones by when they started, then the queue in order;
        an undecoded one counts as ``typical_s`` (read here when not given)."""
        columns = (
            jobs.c.id,
            jobs.c.source,
            jobs.c.owner,
            jobs.c.status,
            jobs.c.duration,
            jobs.c.processed_s,
            jobs.c.started_at,
            jobs.c.created_at,
        )
        query = select(*columns).where(jobs.c.status.in_(("queued", "running")))
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        typical = self.typical_duration() if typical_s is None else typical_s
        ordered = sorted(
            rows,
            key=lambda r: (
                r["status"] != "running",
                aware((r["status"] == "running" and r["started_at"]) or r["created_at"]),
                r["id"],
            ),
        )
        return [
            Pending(
                remaining_s=max((r["duration"] or typical) - float(r["processed_s"] or 0), 0.0),
                running=r["status"] == "running",
                id=r["id"],
                lane=r["source"],
                tenant=tenant_of(r["owner"], r["source"]).id,
            )
            for r in ordered
        ]

    def typical_duration(self) -> float:
        recent = (
            select(jobs.c.duration)
            .where(jobs.c.status == "completed", jobs.c.duration.is_not(None))
            .order_by(jobs.c.finished_at.desc())
            .limit(_TYPICAL_OF)
            .subquery()
        )
        with self._engine.connect() as conn:
            mean = conn.execute(select(func.avg(recent.c.duration))).scalar()
        return float(mean) if mean else UNKNOWN_DURATION_S
