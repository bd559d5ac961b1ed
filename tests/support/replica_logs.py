"""The JSON log files of a running app's replicas, in its Ray session folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support import ray_metrics


def folder(serve_pid: int) -> Path:
    return ray_metrics.session_dir(serve_pid) / "logs" / "serve"


def lines(serve_pid: int) -> dict[str, list[dict[str, Any]]]:
    """Each replica log file's complete lines, every one parsed as JSON (a line still being
    written, after the last newline, is left for the next read)."""
    parsed = {}
    for path in sorted(folder(serve_pid).glob("replica_whisper_*.log")):
        complete = path.read_text().rsplit("\n", 1)[0]
        parsed[path.name] = [json.loads(line) for line in complete.splitlines() if line]
    return parsed


def deployment(file_name: str) -> str:
    """replica_whisper_TranscriberCPU_abc123.log -> TranscriberCPU"""
    return file_name.split("_")[2]
