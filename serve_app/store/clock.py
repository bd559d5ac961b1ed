"""The database's clock, for every lease and deadline that replicas compare.

A lease written with one node's clock and checked with another's is wrong by their difference:
a node ahead takes a live lease, a node behind waits on a dead one. So leases are set and
compared with the database's own time, inside the statement that uses them.

SQLite (one node) has no time type: SQLAlchemy stores ``YYYY-MM-DD HH:MM:SS.ffffff`` text, and
the expressions here produce the same text so that comparisons between the two stay right.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Float, func, literal
from sqlalchemy.sql.elements import ColumnElement as Column

# SQLite's %f is seconds with milliseconds ("SS.SSS"); three zeros make SQLAlchemy's six digits.
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f000"


class DbClock:
    """Time expressions of one engine's dialect."""

    def __init__(self, engine: Engine) -> None:
        self._sqlite = engine.dialect.name == "sqlite"

    def now(self) -> ColumnElement[Any]:
        if self._sqlite:
            return func.strftime(_SQLITE_FORMAT, "now")
        # The transaction's start: one value for every statement of a claim.
        return func.now()

    def stamp(self) -> ColumnElement[Any] | datetime:
        """A time to store that others compare with the database's clock later (when a job was
        accepted, say). SQLite is one node, one clock: its own, kept to the microsecond."""
        return datetime.now(UTC) if self._sqlite else func.now()

    def later(self, seconds: float) -> ColumnElement[Any]:
        """The database's now plus ``seconds`` (negative: earlier)."""
        if self._sqlite:
            return func.strftime(_SQLITE_FORMAT, "now", f"{seconds:+.6f} seconds")
        return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, literal(seconds, Float))

    def seconds_until(self, column: Column[object]) -> ColumnElement[Any]:
        """How long from the database's now until ``column`` (negative once past)."""
        if self._sqlite:
            return (func.julianday(column) - func.julianday("now")) * 86400.0
        return func.extract("epoch", column - func.now())
