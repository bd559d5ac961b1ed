"""Which AMQP job results were already published, shared by every ingest replica.

Calls are blocking: run them in a thread from async code.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from serve_app.store.tables import published_results


class ResultLedger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine

    def was_published(self, job_key: str) -> bool:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(published_results.c.job_key).where(published_results.c.job_key == job_key)
            ).first()
        return row is not None

    def record(self, job_key: str, attachment_id: int, message_id: str, success: bool) -> None:
        values = {
            "job_key": job_key,
            "attachment_id": attachment_id,
            "message_id": message_id,
            "success": success,
            "published_at": datetime.now(UTC),
        }
        insert = pg_insert if self._engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(published_results).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=[published_results.c.job_key],
            set_={k: statement.excluded[k] for k in values if k != "job_key"},
        )
        with self._engine.begin() as conn:
            conn.execute(statement)

    def purge(self, older_than: timedelta) -> int:
        cutoff = datetime.now(UTC) - older_than
        with self._engine.begin() as conn:
            result = conn.execute(
                delete(published_results).where(published_results.c.published_at < cutoff)
            )
        return int(result.rowcount or 0)
