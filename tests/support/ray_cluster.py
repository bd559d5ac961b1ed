"""A Ray cluster of separate node processes on this machine, started as an operator would
(`ray start --head`, `ray start --address ...`), each node in the foreground (`--block`) so the
test owns it and stops only what it started.

Each node gets an address of its own in the loopback range (head 127.0.0.2, workers 127.0.0.3
and up): Ray swaps 127.0.0.1 for the machine's network address, and nothing of this test may
leave loopback. Token authentication is on, with a token of the test's own."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from tests.support.serve_process import free_port

HEAD_IP = "127.0.0.2"
RAY = str(Path(sys.executable).parent / "ray")
SERVE = str(Path(sys.executable).parent / "serve")


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    terminated: bool = False

    def pids(self, part: str) -> list[int]:
        """This node's processes whose command line contains ``part`` (raylet, a replica)."""
        found = []
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in children:
            try:
                if any(part in arg for arg in child.cmdline()):
                    found.append(child.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def terminate(self) -> None:
        """Ask the node to stop: `ray start --block` stops its node's processes on SIGTERM."""
        if self.process.poll() is None and not self.terminated:
            self.process.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout: float = 15) -> None:
        """Terminate, wait up to ``timeout``, then kill whatever is left of the process
        group it leads (it was started in a session of its own)."""
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):  # killed below, then
            self.process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@dataclass
class RayCluster:
    work: Path
    env: dict[str, str]
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)
    _next_ip: int = 3
    # Short: Ray's socket paths under it must stay within the 107 bytes Unix allows.
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc-")))

    def __post_init__(self) -> None:
        token = self.work / "ray_auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {**self.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env.pop("RAY_ADDRESS", None)
        return env

    def _start(self, name: str, ip: str, args: list[str]) -> Node:
        log = self.work / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [RAY, "start", "--block", f"--node-ip-address={ip}", *args],
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node = Node(name, process, log)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 1) -> Node:
        node = self._start(
            "head",
            HEAD_IP,
            [
                "--head",
                f"--port={self.gcs_port}",
                # Its own temp dir: Ray notes the running cluster there (ray_current_cluster),
                # and a later `serve run` of the suite must not join this one.
                f"--temp-dir={self.temp_dir}",
                f"--num-cpus={num_cpus}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                "--disable-usage-stats",
            ],
        )
        self.wait_alive(HEAD_IP)
        return node

    def start_worker(self, name: str, resources: dict[str, float], num_cpus: int = 1) -> Node:
        ip = f"127.0.0.{self._next_ip}"  # a new address: a node started again is a new node
        self._next_ip += 1
        node = self._start(
            name,
            ip,
            [
                f"--address={self.address}",
                f"--num-cpus={num_cpus}",
                f"--resources={json.dumps(resources)}",
                "--disable-usage-stats",
            ],
        )
        self.wait_alive(ip)
        return node

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def wait_alive(self, ip: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if any(n["node_ip"] == ip for n in self.alive_nodes()):
                    return
            except (subprocess.SubprocessError, json.JSONDecodeError):
                pass  # the dashboard is not up yet
            if time.monotonic() > deadline:
                logs = "\n".join(n.log.read_text(errors="replace")[-2000:] for n in self.nodes)
                raise AssertionError(f"Ray node {ip} not alive after {timeout}s:\n{logs}")
            time.sleep(1)

    def state(self, what: str) -> list[dict[str, Any]]:
        """`ray list <what>` as an operator reads it (nodes, actors), from the dashboard."""
        out = subprocess.run(
            [RAY, "list", what, "--address", self.dashboard, "--format", "json", "--detail"],
            env=self._env(),
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        rows: list[dict[str, Any]] = json.loads(out)
        return rows

    def serve_deploy(self, config: Path) -> None:
        subprocess.run(
            [SERVE, "deploy", str(config), "--address", self.dashboard],
            env=self._env(),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def session_dir(self) -> Path:
        """Where the head keeps this cluster's logs (every node here writes under it)."""
        log = self.nodes[0].log.read_text(errors="replace")
        found = re.search(r"Process exit logs will be saved to: \S*?(/\S+?)/logs/", log)
        assert found, "the head did not say where its session is"
        return Path(found[1])

    def stop(self) -> None:
        """The workers together, then the head, each given 5 s before its process group is
        killed: an idle node stops in 1-2 s, but one running model replicas waited out the
        15 s it was given, so a cluster took 20-25 s of every module that used one."""
        workers = [node for node in self.nodes if node.name != "head"]
        for group in (workers, [node for node in self.nodes if node.name == "head"]):
            for node in group:
                node.terminate()
            deadline = time.monotonic() + 5
            for node in group:
                node.stop(timeout=max(deadline - time.monotonic(), 0.1))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def service_env(work: Path, audio_root: Path, rabbitmq_url: str, **extra: str) -> dict[str, str]:
    """Settings every node of a test cluster shares: tiny.en, one SQLite store and spool
    under ``work`` (all nodes are on this machine), audio under ``audio_root``."""
    return {
        "WHISPER_MODEL": "tiny.en",
        "MODELS_DIR": str(work / "models"),
        "DATA_DIR": str(work / "data"),
        "TMP_DIR": str(work / "spool"),
        "ALLOWED_AUDIO_ROOTS": str(audio_root),
        "RABBITMQ_URL": rabbitmq_url,
        **extra,
    }


def cluster_config(port: int) -> dict[str, Any]:
    """cluster/serve_cluster.yaml as shipped, for one machine: loopback, the head's proxy
    only (two proxies cannot share a port), one Gateway; callers size the rest."""
    root = Path(__file__).resolve().parents[2]
    config: dict[str, Any] = yaml.safe_load((root / "cluster" / "serve_cluster.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    config["proxy_location"] = "HeadOnly"
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Gateway":
            deployment["num_replicas"] = 1
    return config


def deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The config's deployments by name (the same dicts: change them in place)."""
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


@contextlib.contextmanager
def head_and_cpu_workers(
    work: Path,
    env: dict[str, str],
    workers: tuple[str, ...] = ("cpu-a", "cpu-b"),
    gpu_workers: tuple[str, ...] = (),
) -> Iterator[RayCluster]:
    """A head with one CPU and workers offering `whisper_cpu` (``gpu_workers``: `whisper_gpu`,
    and no GPU), with two CPUs each: one for its model replica, one for the decoders Serve
    spreads there. One after another: started together, none joined within 120 s."""
    ray = RayCluster(work, env)
    try:
        ray.start_head(num_cpus=1)
        for names, resource in ((workers, "whisper_cpu"), (gpu_workers, "whisper_gpu")):
            for name in names:
                ray.start_worker(name, {resource: 1}, num_cpus=2)
        yield ray
    finally:
        ray.stop()
