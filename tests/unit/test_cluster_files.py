"""The deployment files in cluster/, checked as far as this machine allows: the cluster Serve
config against Serve's schema and the app's arguments, the launcher config against Ray's
autoscaler schema, the KubeRay manifest against KubeRay's RayService schema and its pods and
policies against Kubernetes' schemas, the systemd units with `systemd-analyze verify`, the
Dockerfiles with hadolint and the scripts with shellcheck."""

from __future__ import annotations

import copy
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.autoscaler._private.util import validate_config
from ray.serve.schema import ServeDeploySchema

from serve_app.app import AppArgs
from serve_app.deployments.gateway import Gateway
from serve_app.deployments.ingest import Ingest
from serve_app.deployments.model import TranscriberDeployment
from serve_app.metrics import CATALOG
from tests.support import dashboard

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30"
RAYSERVICE_CRD = ROOT / "tests" / "fixtures" / "kuberay" / "ray.io_rayservices.v1.7.0.yaml.gz"


def _serve_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((CLUSTER / "serve_cluster.yaml").read_text())
    return config


def _deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


def test_cluster_serve_config_places_pools_by_node_resource() -> None:
    config = _serve_config()
    ServeDeploySchema.model_validate(config)
    args = AppArgs.model_validate(config["applications"][0]["args"])
    deployments = _deployments(config)
    assert set(deployments) == {"Gateway", "Ingest"} | {p.name for p in args.pools}
    # The GPU pool is listed first and weighs more: preferred while it runs.
    assert [(p.name, p.device) for p in args.pools] == [
        ("TranscriberGPU", "cuda"),
        ("TranscriberCPU", "cpu"),
    ]
    assert args.pools[0].weight > args.pools[1].weight
    cpu, gpu = deployments["TranscriberCPU"], deployments["TranscriberGPU"]
    assert cpu["ray_actor_options"]["resources"] == {"whisper_cpu": 1}
    assert "num_gpus" not in cpu["ray_actor_options"]
    assert cpu["ray_actor_options"]["runtime_env"]["env_vars"]["WHISPER_COMPUTE_TYPE"] == "int8"
    assert gpu["ray_actor_options"]["num_gpus"] == 1
    assert gpu["ray_actor_options"]["resources"] == {"whisper_gpu": 1}
    gpu_env = gpu["ray_actor_options"]["runtime_env"]["env_vars"]
    assert gpu_env["WHISPER_DEVICE"] == "cuda" and gpu_env["WHISPER_COMPUTE_TYPE"] == "float16"
    assert gpu["autoscaling_config"]["min_replicas"] == 0  # scale to zero
    for light in (Gateway, Ingest):  # what their decoders reserve follows the settings
        assert "ray_actor_options" not in deployments[light.name]
    # Longer than the longest work unit on the slowest pool (a 240 s unit: 14-27 s on two
    # cores with base), so a downscale lets it finish.
    for pool in (cpu, gpu):
        grace = pool.get(
            "graceful_shutdown_timeout_s",
            TranscriberDeployment._deployment_config.graceful_shutdown_timeout_s,
        )
        assert grace >= 240


def test_launcher_config_is_valid_for_rays_autoscaler() -> None:
    config = yaml.safe_load((CLUSTER / "launcher" / "aws.yaml").read_text())
    validate_config(config)
    types = config["available_node_types"]
    assert types["cpu_worker"]["resources"]["whisper_cpu"] >= 1
    assert (
        types["gpu_worker"]["resources"]["whisper_gpu"] == types["gpu_worker"]["resources"]["GPU"]
    )
    assert types["gpu_worker"]["min_workers"] == 0
    assert "whisper_cpu" not in types["head"]["resources"]
    broken = copy.deepcopy(config)
    broken["available_node_types"]["cpu_worker"]["min_wokers"] = 1  # the check can fail
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def _kuberay() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayservice.yaml").read_text()))
    [service] = [d for d in docs if d["kind"] == "RayService"]
    return service, [d for d in docs if d["kind"] != "RayService"]


def _pod_templates(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in cluster["workerGroupSpecs"]})
    return {name: group["template"] for name, group in groups.items()}


def test_kuberay_service_embeds_the_cluster_config_and_valid_pods() -> None:
    service, others = _kuberay()
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == _serve_config()
    secret = yaml.safe_load((CLUSTER / "kuberay" / "secret.example.yaml").read_text())
    for doc in [*others, secret]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    claims = {d["metadata"]["name"] for d in others if d["kind"] == "PersistentVolumeClaim"}
    templates = _pod_templates(service)
    assert set(templates) == {"head", "cpu", "gpu"}
    for name, template in templates.items():
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}}
        kubernetes_validate.validate({**pod, "template": template}, K8S_VERSION, strict=True)
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        [container] = spec["containers"]
        assert container["resources"]["requests"] == container["resources"]["limits"], name
        secrets = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
        assert {"RABBITMQ_URL", "DATABASE_URL", "API_KEYS"} <= {e["name"] for e in container["env"]}
        assert all(ref["name"] == secret["metadata"]["name"] for ref in secrets), name
        assert all(ref["key"] in secret["stringData"] for ref in secrets), name
        assert [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]] == sorted(claims)
    assert templates["gpu"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert "whisper_cpu" in groups["cpu"]["rayStartParams"]["resources"]
    assert "whisper_gpu" in groups["gpu"]["rayStartParams"]["resources"]
    assert groups["gpu"]["minReplicas"] == 0


def _rayservice_schema() -> dict[str, Any]:
    """KubeRay's RayService schema (tests/fixtures/README.md), stricter than the API server in
    one way: a field the schema does not know is an error, where the server would drop it
    unseen (a misspelt option would silently not apply)."""
    crd = yaml.safe_load(gzip.decompress(RAYSERVICE_CRD.read_bytes()))
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            known = "properties" in node and "additionalProperties" not in node
            if known and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    strict(schema["properties"]["spec"])
    return schema


def test_kuberay_service_matches_kuberays_schema_and_guards_the_dashboard() -> None:
    service, others = _kuberay()
    schema = _rayservice_schema()
    jsonschema.validate(service, schema)
    # A misspelt field is caught.
    broken = copy.deepcopy(service)
    broken["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)

    cluster = service["spec"]["rayClusterConfig"]
    # The operator deploys through the head's dashboard port: not bound to loopback (KubeRay
    # binds it to 0.0.0.0 when unset), and behind Ray's token authentication.
    head = cluster["headGroupSpec"]["rayStartParams"]
    assert head.get("dashboard-host", "0.0.0.0") == "0.0.0.0"
    assert cluster["authOptions"] == {"mode": "token"}
    # The NetworkPolicy covers every pod of the cluster; 8265 is open to the operator's pods
    # (and the cluster's own), nothing else; only 8000 is open to everyone.
    [policy] = [d for d in others if d["kind"] == "NetworkPolicy"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for name, template in _pod_templates(service).items():
        assert selector.items() <= template["metadata"]["labels"].items(), name
    rules = policy["spec"]["ingress"]
    own = [r for r in rules if r.get("from") == [{"podSelector": {"matchLabels": selector}}]]
    assert own and "ports" not in own[0]
    by_port = {p["port"]: r.get("from") for r in rules if r not in own for p in r["ports"]}
    assert by_port[8000] is None  # from anywhere
    [operator] = by_port[8265]
    assert operator["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    assert set(by_port) == {8000, 8265, 8080}


def test_kubernetes_schemas_catch_a_broken_pod() -> None:
    service, _ = _kuberay()
    template = copy.deepcopy(_pod_templates(service)["cpu"])
    template["spec"]["containers"][0]["resources"]["requsts"] = {}
    pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**pod, "template": template}, K8S_VERSION, strict=True)


def test_systemd_units_verify(tmp_path: Path) -> None:
    """Each unit, with the install prefix pointed at this checkout (verify checks that the
    commands exist), passes `systemd-analyze verify` without a complaint."""
    units = sorted((CLUSTER / "systemd").glob("*.service"))
    assert [u.name for u in units] == ["whisper-ray-head.service", "whisper-ray-worker.service"]
    for unit in units:
        text = unit.read_text()
        assert "User=whisper" in text and "Restart=on-failure" in text, unit.name
        local = text.replace("/opt/whisper-serve", str(ROOT)).replace(
            "/etc/whisper-serve/whisper.env", str(CLUSTER / "systemd" / "whisper.env.example")
        )
        (tmp_path / unit.name).write_text(local)
        run = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / unit.name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        complaints = [
            line
            for line in (run.stdout + run.stderr).splitlines()
            # The sandbox's own systemd state, not the unit: no D-Bus, no boot.
            if line.strip() and "Failed to" not in line.split(":", 1)[0]
        ]
        assert run.returncode == 0 and not complaints, (unit.name, run.stdout, run.stderr)


def test_dockerfiles_lint_clean_and_run_as_non_root() -> None:
    files = sorted((CLUSTER / "docker").glob("Dockerfile*"))
    assert [f.name for f in files] == ["Dockerfile", "Dockerfile.cuda"]
    run = subprocess.run(
        [str(BIN / "hadolint"), *map(str, files)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for file in files:
        text = file.read_text()
        assert "USER 10001:10001" in text and '".[models]"' in text, file.name
        assert "assemble_base" in text, f"{file.name} must bake the offline base weights in"


def test_scripts_pass_shellcheck() -> None:
    scripts = [
        *sorted((CLUSTER / "systemd").glob("*.sh")),
        *sorted((ROOT / "scripts").glob("*.sh")),
    ]
    run = subprocess.run(
        [str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout


# --- monitoring: the Prometheus config and the Grafana dashboard --------------------------------


def test_every_dashboard_panel_queries_a_metric_the_service_or_serve_exports() -> None:
    panels = dashboard.panels()
    assert len(panels) >= 12 and all(p["targets"] for p in panels)
    names = dashboard.metric_names()
    ours = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names if n.startswith("whisper_")}
    assert ours and ours <= set(CATALOG), ours - set(CATALOG)
    # What operators asked for: request rate, latency, replicas per pool, backlog, RTF.
    for needed in (
        "ray_serve_num_http_requests_total",
        "ray_serve_http_request_latency_ms_bucket",
        "ray_serve_deployment_replica_healthy",
        "whisper_backlog_audio_seconds",
        "whisper_real_time_factor_bucket",
    ):
        assert needed in names, needed
    assert names - {n for n in names if n.startswith("whisper_")} == {
        n for n in names if n.startswith("ray_serve_")
    }
    ids = [p["id"] for p in json.loads(dashboard.DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_gives_the_services_metrics_back_their_names() -> None:
    config = yaml.safe_load((CLUSTER / "monitoring" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    [rule] = job["metric_relabel_configs"]
    # Prometheus anchors the regex and expands $1, as re.fullmatch and \1 do here.
    pattern, replacement = rule["regex"], rule["replacement"].replace("$1", r"\1")

    def renamed(name: str) -> str:
        match = re.fullmatch(pattern, name)
        return match.expand(replacement) if match else name

    assert renamed("ray_whisper_jobs_total") == "whisper_jobs_total"
    assert renamed("ray_whisper_real_time_factor_bucket") == "whisper_real_time_factor_bucket"
    assert renamed("ray_serve_num_http_requests_total") == "ray_serve_num_http_requests_total"


def test_grafana_provisioning_files_point_at_the_dashboard_and_prometheus() -> None:
    grafana = CLUSTER / "monitoring" / "grafana"
    [source] = yaml.safe_load((grafana / "datasource.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"].endswith(":9090")
    [provider] = yaml.safe_load((grafana / "dashboards.yaml").read_text())["providers"]
    assert provider["type"] == "file"
