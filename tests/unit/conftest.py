from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api_standin import StandIn, make_backend


@pytest.fixture
def backend(tmp_path: Path, clip) -> StandIn:  # type: ignore[no-untyped-def]
    """The real FastAPI app's backend, with a stand-in for the model and the queue."""
    return make_backend(tmp_path, clip("en_office", ".mp3"))
