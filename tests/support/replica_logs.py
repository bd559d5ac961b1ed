"""The JSON log files of a running app's replicas, in its Ray session folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support import ray_metrics


def folder(serve_pid: int) -> Path:
    return ray_metrics.session_dir(serve_pid) / "logs" / "serve"


def lines(serve_pid: int) -> dict[str, list[dict[str, Any]]]:
    """Each replica log file's complete lines, every one parsed as JSON."""
    return {
        path.name: _parsed(path.read_text(), None)
        for path in sorted(folder(serve_pid).glob("replica_whisper_*.log"))
    }


def about(serve_pid: int, deployment: str, job: str) -> Iterator[list[dict[str, Any]]]:
    """Per replica of ``deployment``, its lines about ``job`` (only those lines are parsed:
    this is polled while the files grow)."""
    for path in sorted(folder(serve_pid).glob(f"replica_whisper_{deployment}_*.log")):
        yield [line for line in _parsed(path.read_text(), job) if line.get("job") == job]


def deployment(file_name: str) -> str:
    """replica_whisper_TranscriberCPU_abc123.log -> TranscriberCPU"""
    return file_name.split("_")[2]


def _parsed(text: str, containing: str | None) -> list[dict[str, Any]]:
    # A line still being written, after the last newline, is left for the next read.
    complete = text[: text.rfind("\n") + 1]
    return [
        json.loads(line)
        for line in complete.splitlines()
        if line and (containing is None or containing in line)
    ]
