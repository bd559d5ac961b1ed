from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import speech
from tests.support.s3 import S3Server, s3_server


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


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3-compatible server process for the whole run (tests/support/s3.py)."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server
