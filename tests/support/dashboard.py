"""The metric names the shipped Grafana dashboard queries, read from its PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster/monitoring/grafana/whisper-serve.json"
_FUNCTIONS = {"sum", "max", "min", "count", "rate", "histogram_quantile", "by", "le"}
_NAME = re.compile(r"\b([a-z_][a-z0-9_]*)\s*[\[{]")
_BARE = re.compile(r"\(\s*([a-z_][a-z0-9_]*)\s*\)")
_GROUPING = re.compile(r"\b(by|without)\s*\([^)]*\)")


def panels() -> list[dict[str, Any]]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [p for p in board["panels"] if p["type"] != "row"]


def metric_names() -> set[str]:
    """Every series name a panel's expression selects (``name{...}``, ``name[5m]``, ``(name)``)."""
    found: set[str] = set()
    for panel in panels():
        for target in panel["targets"]:
            expr = _GROUPING.sub("", target["expr"])  # label names, not series
            found |= {m for m in _NAME.findall(expr) + _BARE.findall(expr) if m not in _FUNCTIONS}
    return found
