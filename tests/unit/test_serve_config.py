"""serve_config.yaml is valid as shipped and with its GPU pool uncommented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import AppArgs

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"
_GPU_BLOCK = re.compile(r"^[ \t]*# --- GPU pool.*?^[ \t]*# --- end GPU pool[^\n]*\n", re.M | re.S)


def _with_gpu_pool(text: str) -> str:
    def uncomment(match: re.Match[str]) -> str:
        lines = match.group(0).splitlines(keepends=True)[1:-1]  # drop the marker lines
        return "".join(re.sub(r"^(\s*)# ", r"\1", line, count=1) for line in lines)

    enabled, count = _GPU_BLOCK.subn(uncomment, text)
    assert count == 2, "expected the GPU pool entry and the GPU deployment block"
    return enabled


def _check(config: dict[str, Any]) -> tuple[AppArgs, set[str]]:
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    args = AppArgs.model_validate(app["args"])
    deployments = {d["name"] for d in app["deployments"]}
    # Every configured deployment exists in the built app and every pool is configured.
    assert deployments == {"Gateway", "Ingest"} | {pool.name for pool in args.pools}
    assert args.ingest
    return args, deployments


def test_shipped_config_is_valid_cpu_only() -> None:
    args, _ = _check(yaml.safe_load(CONFIG.read_text()))
    assert [(p.name, p.device) for p in args.pools] == [("TranscriberCPU", "cpu")]


def test_gpu_pool_is_valid_when_uncommented() -> None:
    config = yaml.safe_load(_with_gpu_pool(CONFIG.read_text()))
    args, _ = _check(config)
    assert [(p.name, p.device) for p in args.pools] == [
        ("TranscriberCPU", "cpu"),
        ("TranscriberGPU", "cuda"),
    ]
    gpu = next(d for d in config["applications"][0]["deployments"] if d["name"] == "TranscriberGPU")
    assert gpu["ray_actor_options"]["num_gpus"] == 1


def test_log_format_sets_every_deployments_log_encoding(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from serve_app.app import build_app

    for setting, encoding in (("json", "JSON"), ("text", "TEXT")):
        monkeypatch.setenv("LOG_FORMAT", setting)
        gateway = build_app({})._bound_deployment
        pools, _, ingest, *_ = gateway.init_args
        deployments = [gateway, *(app._bound_deployment for app in (ingest, *pools))]
        assert {d.logging_config["encoding"] for d in deployments} == {encoding}


def test_the_diarizer_reserves_its_cpus_and_bounds_its_queue(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from serve_app.app import build_app

    monkeypatch.setenv("DIARIZE_NUM_CPUS", "2")
    monkeypatch.setenv("DIARIZE_MAX_QUEUED", "3")
    *_, diarizer = build_app({"ingest": False})._bound_deployment.init_args
    deployment = diarizer._bound_deployment
    assert deployment.ray_actor_options["num_cpus"] == 2
    assert deployment.max_queued_requests == 3
