"""The application's autoscaling policy (serve_app.deployments.autoscaling.pipeline) over
Serve's contexts: stand-ins with Serve's own AutoscalingConfig, no Ray cluster."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from ray.serve.config import AutoscalingConfig

from serve_app.capacity.drain import PLACEMENT_GRACE_S, SPEED
from serve_app.capacity.intake import IngestReport
from serve_app.deployments.autoscaling import pipeline

POOLS = (("TranscriberGPU", 8.0), ("TranscriberCPU", 1.0))


@dataclass(frozen=True)
class Dep:
    name: str
    app_name: str = "whisper"


def _ctx(
    name: str,
    *,
    running: int,
    target: int | None = None,
    bounds: tuple[int, int] = (1, 8),
    metrics: dict[str, dict[Any, float]] | None = None,
    requests: float = 0.0,
    state: dict[str, Any] | None = None,
    now: float = 1000.0,
) -> Any:
    return SimpleNamespace(
        deployment_name=name,
        current_num_replicas=running,
        target_num_replicas=running if target is None else target,
        running_replicas=[f"{name}-{i}" for i in range(running)],
        total_num_requests=requests,
        aggregated_metrics=metrics or {},
        capacity_adjusted_min_replicas=bounds[0],
        capacity_adjusted_max_replicas=bounds[1],
        policy_state=state or {},
        current_time=now,
        config=AutoscalingConfig(
            min_replicas=bounds[0], max_replicas=bounds[1], target_ongoing_requests=2
        ),
    )


def _ingest(backlog_s: float | None, drain_s: float = 600, depth: int = 0) -> Any:
    report = IngestReport(depth, 0, 4, backlog_s, drain_s, POOLS)
    return _ctx("Ingest", running=1, metrics={k: {"i0": v} for k, v in report.as_metrics().items()})


def _speeds(*values: float) -> dict[str, dict[Any, float]]:
    return {SPEED: {f"r{i}": v for i, v in enumerate(values)}}


def _decide(**contexts: Any) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    decisions, states = pipeline({Dep(name): ctx for name, ctx in contexts.items()})
    return (
        {dep.name: n for dep, n in decisions.items()},
        {dep.name: state for dep, state in states.items()},
    )


def test_long_files_scale_a_pool_further_than_as_many_clips() -> None:
    cpu = _ctx("TranscriberCPU", running=1, metrics=_speeds(10.0), requests=4)
    long, _ = _decide(Ingest=_ingest(10 * 3600), TranscriberCPU=cpu)
    clips, _ = _decide(Ingest=_ingest(10 * 5), TranscriberCPU=cpu)
    assert long["TranscriberCPU"] == 6 and clips["TranscriberCPU"] == 2  # 2: its requests


def test_a_shorter_deadline_raises_the_replicas() -> None:
    cpu = _ctx("TranscriberCPU", running=1, metrics=_speeds(10.0))
    wanted = [
        _decide(Ingest=_ingest(4 * 3600, drain), TranscriberCPU=cpu)[0]["TranscriberCPU"]
        for drain in (1800, 900, 600)
    ]
    assert wanted == [1, 2, 3]


def test_the_gpu_pool_fills_first_and_the_cpu_pool_takes_the_overflow() -> None:
    gpu = _ctx("TranscriberGPU", running=1, bounds=(0, 4), metrics=_speeds(100.0))
    cpu = _ctx("TranscriberCPU", running=1, metrics=_speeds(10.0))
    decided, _ = _decide(Ingest=_ingest(260_000), TranscriberGPU=gpu, TranscriberCPU=cpu)
    assert decided == {"Ingest": 1, "TranscriberGPU": 4, "TranscriberCPU": 4}
    idle, _ = _decide(Ingest=_ingest(0), TranscriberGPU=gpu, TranscriberCPU=cpu)
    assert idle["TranscriberGPU"] == 0 and idle["TranscriberCPU"] == 1


def test_a_pool_waiting_long_for_a_node_hands_its_work_on() -> None:
    # Asked for 1 GPU replica, none placed: within the grace it is counted on, then not.
    cpu = _ctx("TranscriberCPU", running=1, metrics=_speeds(10.0))
    gpu = _ctx("TranscriberGPU", running=0, target=1, bounds=(0, 4), state={"speed": 100.0})
    first, states = _decide(Ingest=_ingest(30_000), TranscriberGPU=gpu, TranscriberCPU=cpu)
    assert first["TranscriberCPU"] == 1
    later = _ctx(
        "TranscriberGPU",
        running=0,
        target=1,
        bounds=(0, 4),
        state=states["TranscriberGPU"],
        now=1000.0 + PLACEMENT_GRACE_S,
    )
    cpu_later = _ctx(
        "TranscriberCPU", running=1, metrics=_speeds(10.0), now=1000 + PLACEMENT_GRACE_S
    )
    decided, _ = _decide(Ingest=_ingest(30_000), TranscriberGPU=later, TranscriberCPU=cpu_later)
    assert decided["TranscriberGPU"] == 1 and decided["TranscriberCPU"] == 5


def test_a_pool_at_zero_keeps_the_speed_it_measured() -> None:
    gpu = _ctx("TranscriberGPU", running=1, bounds=(0, 4), metrics=_speeds(120.0))
    _, states = _decide(Ingest=_ingest(0), TranscriberGPU=gpu)
    asleep = _ctx("TranscriberGPU", running=0, bounds=(0, 4), state=states["TranscriberGPU"])
    decided, _ = _decide(Ingest=_ingest(2 * 72_000), TranscriberGPU=asleep)
    assert states["TranscriberGPU"]["speed"] == 120.0 and decided["TranscriberGPU"] == 2


def test_replicas_outlast_a_backlog_that_just_emptied() -> None:
    cpu = _ctx("TranscriberCPU", running=4, metrics=_speeds(10.0, 10.0, 10.0, 10.0))
    busy, states = _decide(Ingest=_ingest(4 * 6000), TranscriberCPU=cpu)
    calm = _ctx(
        "TranscriberCPU", running=4, metrics=_speeds(10.0), state=states["TranscriberCPU"], now=1030
    )
    after, _ = _decide(Ingest=_ingest(0), TranscriberCPU=calm)
    assert busy["TranscriberCPU"] == 4 and after["TranscriberCPU"] == 2  # half a minute later


def test_without_an_ingest_report_everything_scales_on_requests() -> None:
    cpu = _ctx("TranscriberCPU", running=2, requests=12)
    diarizer = _ctx("Diarizer", running=1, bounds=(0, 2), requests=2)
    decided, _ = _decide(Ingest=_ingest(None), TranscriberCPU=cpu, Diarizer=diarizer)
    assert decided == {"Ingest": 1, "TranscriberCPU": 6, "Diarizer": 1}
    alone, _ = _decide(TranscriberCPU=cpu)
    assert alone == {"TranscriberCPU": 6}


def test_a_one_look_spike_asks_for_replicas_only_while_it_lasts() -> None:
    # Jobs not decoded yet count as typical ones for a second: Serve's upscale delay sees
    # the spike gone at the next look, and the smoothed figure does not keep asking.
    cpu = _ctx("TranscriberCPU", running=1, metrics=_speeds(10.0))
    spike, states = _decide(Ingest=_ingest(4 * 6000), TranscriberCPU=cpu)
    after = _ctx(
        "TranscriberCPU", running=1, metrics=_speeds(10.0), state=states["TranscriberCPU"], now=1001
    )
    gone, _ = _decide(Ingest=_ingest(30), TranscriberCPU=after)
    assert spike["TranscriberCPU"] == 4 and gone["TranscriberCPU"] == 1


def test_a_pool_at_zero_when_idle_lets_its_last_replica_go_soon_after_the_work() -> None:
    gpu = _ctx("TranscriberGPU", running=1, bounds=(0, 4), metrics=_speeds(100.0))
    busy, states = _decide(Ingest=_ingest(60_000), TranscriberGPU=gpu)
    idle = [
        _decide(
            Ingest=_ingest(0),
            TranscriberGPU=_ctx(
                "TranscriberGPU",
                running=1,
                bounds=(0, 4),
                metrics=_speeds(100.0),
                state=states["TranscriberGPU"],
                now=1000 + later,
            ),
        )[0]["TranscriberGPU"]
        for later in (10, 31)
    ]
    # Held a while (the backlog fades with a 30 s half-life), gone once it is under half.
    assert busy["TranscriberGPU"] == 1 and idle == [1, 0]


def test_a_short_deadline_holds_replicas_for_a_short_while() -> None:
    cpu = _ctx("TranscriberCPU", running=4, metrics=_speeds(10.0, 10.0, 10.0, 10.0))
    busy, states = _decide(Ingest=_ingest(400, drain_s=10), TranscriberCPU=cpu)
    calm = _ctx(
        "TranscriberCPU", running=4, metrics=_speeds(10.0), state=states["TranscriberCPU"], now=1005
    )
    after, _ = _decide(Ingest=_ingest(0, drain_s=10), TranscriberCPU=calm)
    # Half-lives of 2.5 s (a quarter of the deadline): 5 s later, a quarter of the backlog.
    assert busy["TranscriberCPU"] == 4 and after["TranscriberCPU"] == 1
