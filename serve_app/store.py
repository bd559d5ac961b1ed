"""Durable records shared by every ingest replica: which job results were already published.

SQLite under DATA_DIR by default (one node); DATABASE_URL pointing to PostgreSQL for a cluster.
Calls are blocking: run them in a thread from async code.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

metadata = MetaData()

published_results = Table(
    "published_results",
    metadata,
    Column("job_key", String(64), primary_key=True),
    Column("attachment_id", BigInteger, nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("success", Boolean, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False, index=True),
)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            # Several replicas share the file: WAL lets readers and one writer proceed together.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class ResultLedger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        metadata.create_all(engine)

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
