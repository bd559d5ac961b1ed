"""A real S3-compatible server for the tests: moto's standalone server (`moto_server`, from
PyPI: no MinIO or Ceph build can be installed on these machines), as its own process on a
free loopback port, speaking S3 over HTTP. It keeps objects in memory: an outage is simulated
by pausing the process (SIGSTOP), which keeps its buckets, as a hung server would.

The test that starts it stops it, by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from tests.support.serve_process import free_port, paused

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-not-for-logs"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def bucket(self, name: str) -> str:
        """A bucket of this name, created if it is not there yet."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]

    def env(self) -> dict[str, str]:
        """What a service needs to reach it, as an operator sets it."""
        return {
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_ACCESS_KEY_ID": ACCESS_KEY,
            "S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "S3_REGION": REGION,
        }

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The server hung (paused) inside the block: connections are accepted by the kernel
        and never answered; everything it held is there again after."""
        with paused([self.process.pid]):
            yield


@contextlib.contextmanager
def s3_server(work: Path, timeout_s: float = 30) -> Iterator[S3Server]:
    port = free_port()
    log = work / "moto_server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server, timeout_s)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test that failed in an outage
            os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: S3Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {server.log.read_text()[-2000:]}")
        try:
            httpx.get(server.endpoint, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer in {timeout_s:.0f} s") from None
            time.sleep(0.1)
