"""Each deployment option is set in one place: on the deployment's class (the same in every
installation), in serve_app/app.py (it follows a setting), or in an installation's YAML (sized
there). An option set in two of them would leave a reader guessing which one wins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.app import AppArgs, build_app
from serve_app.deployments.diarizer import DiarizerDeployment
from serve_app.deployments.gateway import Gateway
from serve_app.deployments.ingest import Ingest
from serve_app.deployments.model import TranscriberDeployment
from tests.unit.test_serve_config import _with_gpu_pool

ROOT = Path(__file__).resolve().parents[2]
# What app.py sets, from settings: the log encoding (LOG_FORMAT) on every deployment, what
# the decoders of the Gateway and the Ingest reserve (DECODE_NUM_CPUS, MAX_DECODED_AUDIO_MB),
# and the Diarizer's reserved CPUs and queue (DIARIZE_NUM_CPUS, DIARIZE_MAX_QUEUED: its calls
# wait in the replica, in fair shares, so it takes that many at once).
FROM_SETTINGS = {"logging_config"}
FROM_SETTINGS_BY_NAME = {
    "Gateway": {"ray_actor_options"},
    "Ingest": {"ray_actor_options"},
    "Diarizer": {"ray_actor_options", "max_queued_requests", "max_ongoing_requests"},
}
# Serve's own bookkeeping of a bound deployment, not options.
_BOOKKEEPING = {"name", "_init_args", "_init_kwargs"}


def _on_class(deployment: Any) -> set[str]:
    return set(deployment._deployment_config.user_configured_option_names) - {"name"}


def _from_settings(name: str) -> set[str]:
    return FROM_SETTINGS | FROM_SETTINGS_BY_NAME.get(name, set())


def _installations() -> dict[str, dict[str, Any]]:
    shipped = (ROOT / "serve_config.yaml").read_text()
    return {
        "serve_config.yaml": yaml.safe_load(shipped),
        "serve_config.yaml with its GPU pool": yaml.safe_load(_with_gpu_pool(shipped)),
        "cluster/serve_cluster.yaml": yaml.safe_load(
            (ROOT / "cluster" / "serve_cluster.yaml").read_text()
        ),
    }


@pytest.mark.parametrize("installation", list(_installations()))
def test_an_installation_sizes_only_what_the_code_leaves_open(installation: str) -> None:
    (app,) = _installations()[installation]["applications"]
    pools = {pool.name for pool in AppArgs.model_validate(app["args"]).pools}
    classes: dict[str, Any] = {"Gateway": Gateway, "Ingest": Ingest}
    classes |= {name: TranscriberDeployment for name in pools}
    for entry in app["deployments"]:
        name = entry["name"]
        sized = set(entry) - {"name"}
        twice = sized & (_on_class(classes[name]) | _from_settings(name))
        assert not twice, f"{installation}: {name} sets {sorted(twice)}, set in code already"


def test_app_py_sets_only_what_the_classes_leave_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serve_app.app.diarization_installed", lambda: True)
    gateway = build_app({"pools": [{"name": "TranscriberCPU"}, {"name": "TranscriberGPU"}]})
    bound = gateway._bound_deployment
    pools, _, ingest, diarizer = bound.init_args
    built_from = [
        (bound, Gateway),
        (ingest._bound_deployment, Ingest),
        (diarizer._bound_deployment, DiarizerDeployment),
        *((pool._bound_deployment, TranscriberDeployment) for pool in pools),
    ]
    for built, decorated in built_from:
        name = built.name
        assert not _on_class(decorated) & _from_settings(name), name
        # Whatever app.py sets is in the table above, so the YAML check sees it.
        options = set(built._deployment_config.user_configured_option_names) - _BOOKKEEPING
        assert options <= _on_class(decorated) | _from_settings(name), name


def test_the_decoders_of_the_gateway_and_the_ingest_are_counted_by_ray(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray places them by the CPUs and memory their decoders take (DECODE_NUM_CPUS,
    MAX_DECODED_AUDIO_MB), so a node is not oversubscribed by decoders it cannot see."""
    monkeypatch.setenv("DECODE_NUM_CPUS", "0.5")
    monkeypatch.setenv("MAX_DECODED_AUDIO_MB", "256")
    gateway = build_app({"ingest": True, "diarization": False})._bound_deployment
    ingest = gateway.init_args[2]._bound_deployment
    for built in (gateway, ingest):
        assert built.ray_actor_options == {"num_cpus": 0.5, "memory": 256 * 1024 * 1024}
