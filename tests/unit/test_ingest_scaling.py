"""How many Ingest replicas the broker's backlog wants (serve_app.capacity.intake), and the
Serve policy that reads the replicas' reports (pure logic: Serve's own context stands in)."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

from serve_app.app import AppArgs
from serve_app.capacity.intake import IngestReport, replicas_wanted
from serve_app.deployments.autoscaling import ingest_by_queue_depth, pipeline
from serve_app.settings import Settings
from tests.unit.test_deployment_options import _installations

WORKERS_COUNT = Settings.model_fields["workers_count"].default
SERVE_TARGET = 2  # Serve's target_ongoing_requests when a config names none


def _gathered(*reports: IngestReport) -> dict[str, dict[object, float]]:
    """As Serve hands them to the policy: each metric's value per replica."""
    out: dict[str, dict[object, float]] = {}
    for replica, report in enumerate(reports):
        for name, value in report.as_metrics().items():
            out.setdefault(name, {})[replica] = value
    return out


def test_the_prefetch_of_the_replicas_covers_the_queue_and_what_is_held() -> None:
    # 150 jobs waiting, two replicas holding 4 each at WORKERS_COUNT=4: 158 / 4.
    reports = _gathered(IngestReport(150, 4, 4), IngestReport(150, 4, 4))
    assert replicas_wanted(reports) == 40
    # The depth is the broker's: read by every replica, counted once.
    assert replicas_wanted(_gathered(IngestReport(9, 0, 4))) == 3


def test_an_idle_broker_wants_one_replica_and_no_report_wants_no_change() -> None:
    assert replicas_wanted(_gathered(IngestReport(0, 0, 4), IngestReport(0, 0, 4))) == 1
    assert replicas_wanted({}) is None
    idle = SimpleNamespace(aggregated_metrics=None, target_num_replicas=2)
    assert ingest_by_queue_depth(idle) == (2, {})  # type: ignore[arg-type]
    busy = SimpleNamespace(
        aggregated_metrics=_gathered(IngestReport(30, 2, 4)), target_num_replicas=2
    )
    assert ingest_by_queue_depth(busy) == (8, {})  # type: ignore[arg-type]


@pytest.mark.parametrize("installation", list(_installations()))
def test_the_ingest_at_its_maximum_holds_every_model_replica_at_its_target(
    installation: str,
) -> None:
    """Jobs in flight follow the model replicas: the Ingest's replicas at their maximum,
    WORKERS_COUNT each, hold what every pool needs at its maximum to stay at its target
    (queued jobs are the pools' only load, so fewer would cap them below it)."""
    (app,) = _installations()[installation]["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    pools = [pool.name for pool in AppArgs.model_validate(app["args"]).pools]
    busy = 0
    for pool in pools:
        scaling = deployments[pool]["autoscaling_config"]
        busy += scaling["max_replicas"] * scaling.get("target_ongoing_requests", SERVE_TARGET)
    ingest = deployments["Ingest"]["autoscaling_config"]
    assert ingest["max_replicas"] * WORKERS_COUNT >= busy, installation
    assert ingest["min_replicas"] >= 1  # never none: the queue would wait for nobody
    module, name = app["autoscaling_policy"]["policy_function"].split(":")
    assert getattr(importlib.import_module(module), name) is pipeline
