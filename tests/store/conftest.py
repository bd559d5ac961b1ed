from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.store import JobStore, open_engine
from tests.support.databases import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on a fresh SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'whisper.db'}"
    else:
        with postgres_database() as database:
            yield database


@pytest.fixture
def store(url: str) -> Iterator[JobStore]:
    """A job store on the migrated database of ``url`` (open_engine makes SQLite's folder)."""
    engine = open_engine(url)
    yield JobStore(engine)
    engine.dispose()
