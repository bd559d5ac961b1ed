"""One real `serve run serve_config.yaml` on a local Ray, shared by every integration test.

Settings come from the environment exactly as a user would set them: tiny.en by default (the
language does not matter for most tests), base for Spanish, small limits to test them cheaply.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.serve_process import ServiceFailedError, serve_run

MAX_FILE_SIZE_MB = 2
MAX_AUDIO_DURATION_SEC = 120


@dataclass
class Service:
    url: str
    tmp_dir: Path
    log: Path

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("service")
    tmp_dir = work / "spool"
    env = {
        "WHISPER_MODEL": "tiny.en",
        "WHISPER_EXTRA_MODELS": "base",
        "MAX_FILE_SIZE_MB": str(MAX_FILE_SIZE_MB),
        "MAX_AUDIO_DURATION_SEC": str(MAX_AUDIO_DURATION_SEC),
        "MODELS_DIR": str(work / "models"),
        "TMP_DIR": str(tmp_dir),
    }
    try:
        with serve_run(work, env) as (url, _, log):
            yield Service(url=url, tmp_dir=tmp_dir, log=log)
    except ServiceFailedError as exc:
        pytest.fail(str(exc))
