"""Run the real `serve run serve_config.yaml` in a subprocess, as a user would.

Only the HTTP port is changed, so tests and benchmarks exercise the config file users run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[2]


class ServiceFailedError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_run(
    work: Path,
    env: dict[str, str],
    wait_healthy_s: float | None = 300,
    deployments: dict[str, dict[str, Any]] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """Yield (url, process, log path); stops Serve and its local Ray on exit.

    ``deployments`` overrides options of named deployments (e.g. shorter autoscaling delays).
    """
    port = free_port()
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    for deployment in config["applications"][0]["deployments"]:
        _merge(deployment, (deployments or {}).get(deployment["name"], {}))
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    full_env = {**os.environ, **env}
    # A Ray of its own, even where another local cluster runs (a test's `ray start`, yours).
    full_env["RAY_ADDRESS"] = "local"
    log = work / "serve.log"
    serve_bin = Path(sys.executable).parent / "serve"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(serve_bin), "run", str(config_path)],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Python only turns SIGINT into KeyboardInterrupt (serve run's Ctrl-C shutdown) if
            # it is neither ignored nor blocked, and a child inherits both from this process.
            # Started mid-run (an app restart), serve run never acted on SIGINT in three full
            # runs: the session's shutdown check waited 60 s and killed it.
            preexec_fn=_default_sigint,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        if wait_healthy_s is not None:
            wait_healthy(url, proc, log, wait_healthy_s)
        yield url, proc, log
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _default_sigint() -> None:
    # Both what is inherited across exec: the disposition, and the mask (a library that
    # blocks signals while it starts a helper thread or process leaves them blocked here).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


@contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) inside the block and resumed (SIGCONT) after it, even
    when it raises: a check made while they are paused cannot race their work. A process that
    is already gone has no work to race: Ray's actor list can still name a replica that has
    just ended (CI: "No such process" on a pid it listed as alive)."""
    stopped = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        stopped.append(pid)
    try:
        yield
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                continue  # ended while paused (killed inside the block)


def replica_pids(serve_pid: int, deployment: str, app: str = "whisper") -> list[int]:
    """The replica processes of ``deployment`` under one `serve run` (its local Ray's raylet
    starts them), so a test kills only what it started."""
    title = f"ServeReplica:{app}:{deployment}"
    try:
        children = psutil.Process(serve_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if any(title in part for part in child.cmdline()):
                found.append(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # ended while we looked
    return found


def _merge(target: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceFailedError(
                f"serve run exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise ServiceFailedError(f"not healthy after {timeout_s:.0f}s:\n{log.read_text()[-4000:]}")
