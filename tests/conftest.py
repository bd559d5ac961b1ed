from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import speech


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def clip(speech_dir: Path):  # type: ignore[no-untyped-def]
    """clip(name, suffix) -> path of the fixture text spoken and encoded in that container."""

    def make(name: str, suffix: str = ".wav") -> Path:
        wav = speech.synthesize(name, speech_dir)
        return wav if suffix == ".wav" else speech.encode(wav, suffix, speech_dir)

    return make
