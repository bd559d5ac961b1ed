"""Short jobs per second over AMQP against a plain faster-whisper loop, and what each job costs
around the model: CPU seconds per process kind and store transactions.

    .venv/bin/python -m bench.job_rate [--jobs 200] [--model tiny.en]

Clips of 1-3 s (a few words each, synthesized) are transcribed by plain faster-whisper one after
another (the seeds' options: beam 5, VAD), then published at once as Whisper-Local requests to the
service, which runs on PostgreSQL (a database of its own) with one Ingest and one model replica
(pinned, so that no replica starts mid-run). The service's figure runs from the first publish to
the last result.

"Beyond the idle draw" takes off what each kind burns with no jobs at all (Ray's controller,
GCS and dashboard, the replicas' own loops) over the run's length: what each job adds, the
figure that holds where jobs come faster (a GPU's model replicas) and the idle draw is spread
over more of them.

CPU is read from /proc (user + system, with reaped children: FFmpeg lands on the Ingest, ended
backends on PostgreSQL's postmaster) over the same window, by process kind: the model replicas,
the Ingest, the Gateway, Ray's own (everything else under `serve run`), PostgreSQL and RabbitMQ.
Transactions are PostgreSQL's own count for the service's database (pg_stat_database), read
after its backends have flushed their statistics, less what the service does idle over the
same time (measured before the jobs).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from sqlalchemy import create_engine, text

from bench.common import (
    deployment_overrides,
    duration,
    plain_sequential,
    sentences,
    service_options,
)
from serve_app.model.weights import resolve_model_path
from serve_app.model_options import cpu_threads
from serve_app.settings import Settings
from tests.support import amqp, speech
from tests.support.databases import POSTGRES_ADMIN_URL, postgres_database
from tests.support.serve_process import serve_run

URL = "amqp://guest:guest@127.0.0.1:5672/"
# One replica each: a replica started mid-run would cost seconds of CPU that no job asked for.
PINNED = {
    "Ingest": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    "TranscriberCPU": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
}
KINDS = ("model replicas", "Ingest", "Gateway", "Ray's own", "PostgreSQL", "RabbitMQ")
# PostgreSQL backends report their statistics at most every second, and an idle one within
# 10 s (PGSTAT_IDLE_INTERVAL): a read this long after the work has all of it.
STATS_SETTLE_S = 12.0


def phrase_clips(out: Path, count: int) -> list[tuple[Path, str]]:
    """``count`` distinct clips of 1-3 s: three to seven words of the reference texts each."""
    clips: list[tuple[Path, str]] = []
    for sentence in sentences():
        words = sentence.split()
        for start in range(0, len(words) - 3, 5):
            phrase = " ".join(words[start : start + 5 + len(clips) % 3 - 1])
            wav = speech.speak(phrase, "en-us", out / f"short{len(clips):03d}.wav", 175)
            clip = speech.encode(wav, ".mp3", out)
            if 1.0 <= duration(clip) <= 3.0:
                clips.append((clip, phrase))
            if len(clips) == count:
                return clips
    return clips


def cpu_by_kind(serve_pid: int) -> dict[str, float]:
    """CPU seconds so far of every process of each kind (reaped children included)."""
    totals: dict[str, float] = defaultdict(float)
    serve = psutil.Process(serve_pid)
    for proc in [serve, *serve.children(recursive=True)]:
        try:
            cmdline = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # ended while read: its time is its parent's now
        if "ServeReplica:whisper:Transcriber" in cmdline:
            kind = "model replicas"
        elif "ServeReplica:whisper:Ingest" in cmdline:
            kind = "Ingest"
        elif "ServeReplica:whisper:Gateway" in cmdline:
            kind = "Gateway"
        elif proc.ppid() != 1 and "ffmpeg" in cmdline:
            continue  # an Ingest's decoder, counted with it once reaped
        else:
            kind = "Ray's own"
        totals[kind] += _cpu_s(times)
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        kind = "PostgreSQL" if name.startswith("postgres") else ""
        kind = "RabbitMQ" if name.startswith("beam.smp") else kind
        if kind:
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            totals[kind] += _cpu_s(times)
    return totals


def _cpu_s(times: Any) -> float:
    """User and system time, with that of children reaped."""
    return float(times.user + times.system + times.children_user + times.children_system)


def transactions(database: str) -> int:
    """Transactions PostgreSQL has counted for ``database``, read from another database so
    that reading adds none."""
    admin = create_engine(POSTGRES_ADMIN_URL)
    try:
        with admin.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                        "WHERE datname = :name"
                    ),
                    {"name": database},
                ).scalar_one()
            )
    finally:
        admin.dispose()


def own_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def plain(
    model: str, clips: list[tuple[Path, str]], jobs: int, models: Path
) -> tuple[float, float]:
    """Seconds for the loop, and its CPU seconds per job."""
    transcribe = plain_sequential(model, models)
    transcribe(clips[0][0])  # warm-up, as the service gets one
    started, cpu = time.perf_counter(), own_cpu_s()
    for i in range(jobs):
        transcribe(clips[i % len(clips)][0])
    return time.perf_counter() - started, (own_cpu_s() - cpu) / jobs


def encoder_cpu_s(model: str, models: Path, runs: int = 5) -> float:
    """CPU seconds of one encoder pass over a 30 s window, as a replica's model runs it. Every
    short job costs at least this: Whisper encodes 30 s whatever a window holds, and a
    request's audio never shares a window with another's."""
    import ctranslate2
    from faster_whisper import WhisperModel

    settings = Settings()
    whisper = WhisperModel(
        resolve_model_path(model, models),
        device="cpu",
        compute_type="int8",
        cpu_threads=cpu_threads(settings),
    )
    noise = np.random.default_rng(0).normal(0, 0.05, 16000 * 30).astype(np.float32)
    features = np.ascontiguousarray(whisper.feature_extractor(noise)[None, :, :3000])
    window = ctranslate2.StorageView.from_array(features)
    whisper.model.encode(window, to_cpu=False)  # warm-up
    cpu = own_cpu_s()
    for _ in range(runs):
        whisper.model.encode(window, to_cpu=False)
    return (own_cpu_s() - cpu) / runs


def service(
    model: str,
    clips: list[tuple[Path, str]],
    jobs: int,
    work: Path,
    overrides: dict[str, dict[str, object]],
    extra_env: dict[str, str],
) -> dict[str, float]:
    with postgres_database() as database_url:
        database = database_url.rsplit("/", 1)[1]
        env = {
            "WHISPER_MODEL": model,
            "MODELS_DIR": str(work / "models"),
            "DATA_DIR": str(work / "data"),
            "DATABASE_URL": database_url,
            "ALLOWED_AUDIO_ROOTS": str(clips[0][0].parent),
            "RABBITMQ_URL": URL,
            **extra_env,
        }
        with serve_run(work, env, deployments={**PINNED, **overrides}) as (_, proc, _):
            collector = amqp.ResultCollector(URL)
            try:
                first = 10**9 + int(time.time()) % 10**6 * 1000
                amqp.publish(URL, {"attachment_id": first, "audio_file_path": str(clips[0][0])})
                collector.wait(first, timeout=300)
                time.sleep(STATS_SETTLE_S)  # the warm-up's statistics in, then idle
                idle_from, idle_cpu_from = transactions(database), cpu_by_kind(proc.pid)
                time.sleep(STATS_SETTLE_S)
                idle_to, cpu_from = transactions(database), cpu_by_kind(proc.pid)
                ids = list(range(first + 1, first + 1 + jobs))
                started = time.perf_counter()
                amqp.publish(
                    URL,
                    *(
                        {
                            "attachment_id": i,
                            "audio_file_path": str(clips[n % len(clips)][0]),
                            "language": "en",
                        }
                        for n, i in enumerate(ids)
                    ),
                )
                results = [collector.wait(i, timeout=1800) for i in ids]
                elapsed = time.perf_counter() - started
                cpu_to = cpu_by_kind(proc.pid)
                time.sleep(STATS_SETTLE_S)
                busy = transactions(database) - idle_to
                duplicates = [i for i in ids if len(collector.all(i)) != 1]
            finally:
                collector.close()
    failed = [r for r in results if not r["success"]]
    assert not failed and not duplicates, (failed[:3], duplicates[:3])
    wer = statistics.mean(
        speech.word_error_rate(clips[n % len(clips)][1], r["texto"]) for n, r in enumerate(results)
    )
    idle_rate = (idle_to - idle_from) / STATS_SETTLE_S
    figures = {
        "elapsed_s": elapsed,
        "wer": wer,
        "xact_per_job": (busy - idle_rate * (elapsed + STATS_SETTLE_S)) / jobs,
        "idle_xact_per_s": idle_rate,
    }
    for kind in KINDS:
        figures[f"cpu:{kind}"] = (cpu_to.get(kind, 0.0) - cpu_from.get(kind, 0.0)) / jobs
        idle = cpu_from.get(kind, 0.0) - idle_cpu_from.get(kind, 0.0)
        figures[f"idle:{kind}"] = idle / STATS_SETTLE_S
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clips", type=int, default=40, help="distinct clips, cycled")
    parser.add_argument("--model", default="tiny.en")
    service_options(parser)  # --deployment goes over the pinned replicas too
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = phrase_clips(work / "audio", args.clips)
        audio_s = statistics.mean(duration(p) for p, _ in clips)
        plain_s, plain_cpu = plain(args.model, clips, args.jobs, work / "models")
        encoder = encoder_cpu_s(args.model, work / "models")
        overrides = deployment_overrides(args.deployment)
        extra_env = dict(item.split("=", 1) for item in args.env)
        got = service(args.model, clips, args.jobs, work, overrides, extra_env)
    n = args.jobs
    print(
        f"machine: {os.cpu_count()} cores; model {args.model} int8 CPU; {n} jobs over "
        f"{len(clips)} distinct clips of {audio_s:.1f} s on average (mp3)"
    )
    print(
        f"plain faster-whisper loop: {n / plain_s:.2f} jobs/s, {plain_cpu * 1000:.0f} ms CPU each"
    )
    print(
        f"service over AMQP, first publish to last result: {n / got['elapsed_s']:.2f} jobs/s "
        f"(mean WER {got['wer']:.3f})"
    )
    print(f"service / plain: {plain_s / got['elapsed_s']:.2f}x")
    print(
        "CPU per job (ms): over the run; each kind's idle draw (ms per s, before the jobs); "
        "per job beyond that draw"
    )
    outside = beyond = 0.0
    per_s = got["elapsed_s"] / n
    for kind in KINDS:
        per_job, idle = got[f"cpu:{kind}"] * 1000, got[f"idle:{kind}"] * 1000
        if kind not in ("model replicas", "RabbitMQ"):
            outside += per_job
            beyond += per_job - idle * per_s
        print(
            f"  {kind:15} {per_job:7.1f}   idle {idle:6.1f}   beyond {per_job - idle * per_s:7.1f}"
        )
    print(
        f"CPU per job outside the model replicas (RabbitMQ aside): {outside:.1f} ms "
        f"({beyond:.1f} ms beyond the idle draw)"
    )
    cores = os.cpu_count() or 1
    print(
        f"the encoder alone: {encoder * 1000:.0f} ms of CPU per 30 s window, one per short job: "
        f"at most {cores / encoder:.2f} jobs/s on {cores} cores "
        f"({plain_s / n * cores / encoder:.2f}x the loop) were nothing else to run"
    )
    print(
        f"store transactions per job: {got['xact_per_job']:.1f} "
        f"(idle: {got['idle_xact_per_s']:.2f} per s, taken off)"
    )


if __name__ == "__main__":
    main()
