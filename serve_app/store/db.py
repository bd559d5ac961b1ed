"""Engines and schema migrations for SQLite (one node, the default) and PostgreSQL (a cluster).

Every replica that opens the store calls ``open_engine``; migrations run under a lock so that
replicas starting together apply each one once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_ID = 0x5748_4953  # any constant shared by every replica
# A pooled connection idle this long is pinged before use (a server restart or a firewall may
# have dropped it meanwhile). Pinging on every checkout, as pool_pre_ping does, doubled the
# round trips and transactions of each store call; a connection that was used moments ago is
# trusted, and if the server went away since, its error invalidates the whole pool.
PING_IDLE_S = 10.0


def make_engine(url: str, pool_size: int | None = None) -> Engine:
    """An engine without migrating; ``pool_size``: a pool of just that many connections (for
    a path of its own, such as lease renewals), else SQLAlchemy's default pool."""
    options: dict[str, Any] = (
        {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 0}
    )
    # A store error's text would carry its statement's bound values (transcripts, prompts,
    # file names) into every log that records it: keep them out.
    options["hide_parameters"] = True
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            # Several replicas share the file: WAL lets readers and one writer proceed together.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(url, **options)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_S:
            return  # new, or used moments ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool drops this connection and checks out another (SQLAlchemy's documented
            # way to refuse a stale connection at checkout).
            logger.info("A pooled database connection was dead (%s); reconnecting", exc)
            raise DisconnectionError() from exc


def open_engine(url: str) -> Engine:
    """An engine on a database migrated to the current schema. Blocking."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    migrate(engine)
    return engine


def migrate(engine: Engine, revision: str = "head") -> None:
    with _migration_lock(engine) as connection:
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        try:
            row = connection.execute(text("SELECT version_num FROM alembic_version")).first()
        except Exception:
            return None
    return None if row is None else str(row[0])


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            # Held until this transaction ends: the other replicas wait, then find nothing to do.
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
            yield connection
        return
    database = engine.url.database
    lock_path = Path(f"{database}.migrate.lock") if database else None
    with contextlib.ExitStack() as stack:
        if lock_path is not None:
            lock = stack.enter_context(open(lock_path, "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        with engine.begin() as connection:
            yield connection
