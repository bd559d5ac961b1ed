from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.model.transcriber import Transcriber
from serve_app.settings import Settings
from tests.support.api_standin import StandIn, make_backend


@pytest.fixture
def backend(tmp_path: Path, clip) -> StandIn:  # type: ignore[no-untyped-def]
    """The real FastAPI app's backend, with a stand-in for the model and the queue."""
    return make_backend(tmp_path, clip("en_office", ".mp3"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Transcriber:
    """The real tiny.en model, loaded once per test module."""
    settings = Settings(whisper_model="tiny.en", models_dir=tmp_path_factory.mktemp("models"))
    return Transcriber.load("tiny.en", settings)
