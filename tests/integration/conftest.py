"""One real `serve run serve_config.yaml` on a local Ray, shared by every integration test.

The config file is the one users run, with only the HTTP port changed; settings come from the
environment exactly as a user would set them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 300
MAX_FILE_SIZE_MB = 2
MAX_AUDIO_DURATION_SEC = 120


@dataclass
class Service:
    url: str
    tmp_dir: Path
    log: Path

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve run exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"service not healthy after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("service")
    port = _free_port()
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    tmp_dir = work / "spool"
    env = {
        **os.environ,
        "WHISPER_MODEL": "tiny.en",
        "WHISPER_EXTRA_MODELS": "base",
        "MAX_FILE_SIZE_MB": str(MAX_FILE_SIZE_MB),
        "MAX_AUDIO_DURATION_SEC": str(MAX_AUDIO_DURATION_SEC),
        "MODELS_DIR": str(work / "models"),
        "TMP_DIR": str(tmp_dir),
    }
    env.pop("RAY_ADDRESS", None)
    log = work / "serve.log"
    serve_bin = Path(sys.executable).parent / "serve"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(serve_bin), "run", str(config_path)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield Service(url=url, tmp_dir=tmp_dir, log=log)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
