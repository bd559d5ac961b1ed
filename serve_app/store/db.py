"""Engines and schema migrations for SQLite (one node, the default) and PostgreSQL (a cluster).

Every replica that opens the store calls ``open_engine``; migrations run under a lock so that
replicas starting together apply each one once.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text

_MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_ID = 0x5748_4953  # any constant shared by every replica


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
    return create_engine(url, pool_pre_ping=True, **options)


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
