"""Reading what a local Ray exports for Prometheus: its metrics agents' endpoints come from the
session's service-discovery file, as a Prometheus server configured for Ray finds them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

DISCOVERY = "prom_metrics_service_discovery.json"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def session_dir(serve_pid: int) -> Path:
    """The session of the Ray that `serve run` (this pid) started: named on its raylet's
    command line."""
    for child in psutil.Process(serve_pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if found := re.search(r"--session[-_]dir=(\S+)", line):
            return Path(found.group(1))
    raise AssertionError(f"no Ray session under pid {serve_pid}")


def scrape(session: Path) -> list[Sample]:
    targets = [
        target
        for group in json.loads((session / DISCOVERY).read_text())
        for target in group["targets"]
    ]
    samples: list[Sample] = []
    for target in targets:
        text = httpx.get(f"http://{target}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            samples += [Sample(s.name, dict(s.labels), s.value) for s in family.samples]
    return samples


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def names(samples: Iterable[Sample]) -> set[str]:
    return {s.name for s in samples}
