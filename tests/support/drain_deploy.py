"""`cluster/serve_cluster.yaml` deployed on a simulated cluster with a drain deadline, the
model pools sized for this machine, and a way to know when that deploy runs: shared by the
drain tests and `bench/drain.py`.

Requests in flight never ask for a replica here (a target of 64): only the backlog's audio
can. One Ingest replica, whose reports (the backlog) Serve averages over a 2 s look-back, so
the backlog of a phase that takes 20 s is seen while it lasts. The GPU pool is simulated: it
asks for a node offering `whisper_gpu` and no GPU, and runs tiny.en on that node's CPU."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.support.curve import health
from tests.support.ray_cluster import RayCluster, cluster_config, deployments

POOLS = ("TranscriberGPU", "TranscriberCPU")


def _simulate_gpu(app: dict[str, Any], pool: dict[str, Any]) -> None:
    for args in app["args"]["pools"]:
        if args["name"] == "TranscriberGPU":
            # A CPU in disguise: routed and taken (before it measures) as fast as the CPU pool.
            args.update(device="cpu", weight=1)
    options = pool["ray_actor_options"]
    options.pop("num_gpus", None)
    options["runtime_env"]["env_vars"] = {"WHISPER_DEVICE": "cpu", "WHISPER_COMPUTE_TYPE": "int8"}


def drain_config(
    port: int,
    drain_s: int,
    pools: dict[str, dict[str, Any]],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The config with the pools named in ``pools`` (each with its autoscaling options over
    the shipped ones), the deadline and ``env`` for every replica."""
    config = cluster_config(port)
    [app] = config["applications"]
    app["runtime_env"] = {"env_vars": {"SCALE_TARGET_DRAIN_SEC": str(drain_s), **(env or {})}}
    app["args"]["pools"] = [p for p in app["args"]["pools"] if p["name"] in pools]
    app["deployments"] = [
        d for d in app["deployments"] if d["name"] not in POOLS or d["name"] in pools
    ]
    by_name = deployments(config)
    by_name["Ingest"]["autoscaling_config"].update(
        min_replicas=1, max_replicas=1, look_back_period_s=2
    )
    for name, autoscaling in pools.items():
        pool = by_name[name]
        pool["max_ongoing_requests"] = 64
        pool["autoscaling_config"].update(target_ongoing_requests=64, **autoscaling)
        if name == "TranscriberGPU":
            _simulate_gpu(app, pool)
    return config


def deploy(cluster: RayCluster, config: dict[str, Any], name: str) -> None:
    path = cluster.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    cluster.serve_deploy(path)


def rolled_out(cluster: RayCluster, url: str, drain_s: int, running: dict[str, int]) -> bool:
    """The deploy asking for ``drain_s`` runs: each pool has the replicas ``running`` says,
    every live Ingest and model replica was started with the deadline (they read it when
    they start), and the service answers."""
    try:
        pools = health(url).get("pools", {})
    except Exception:  # not listening yet, or the proxy before the app
        return False
    if any(
        pools.get(name, {}).get("replicas", {}).get("RUNNING", 0) != count
        or set(pools.get(name, {}).get("replicas", {})) - {"RUNNING"}
        for name, count in running.items()
    ):
        return False
    asked = re.compile(rf'"SCALE_TARGET_DRAIN_SEC":\s*"{drain_s}"')
    names = {"ServeReplica:whisper:Ingest", *(f"ServeReplica:whisper:{n}" for n in running)}
    replicas = [
        actor
        for actor in cluster.state("actors")
        if actor["state"] == "ALIVE" and actor["class_name"] in names
    ]
    return len(replicas) == 1 + sum(running.values()) and all(
        asked.search(actor.get("serialized_runtime_env") or "") for actor in replicas
    )
