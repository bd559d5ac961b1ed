"""One key floods the service with long files while another sends short clips: the quiet key's
latency with fair shares between keys against plain first come first served (FAIR_SHARES=false),
each in a service of its own, in one run.

    .venv/bin/python -m bench.fairness [--model tiny.en] [--flood 12] [--clips 8]

The flood key submits ``--flood`` jobs of the 4-minute recording at once (more than the job
slots: WORKERS_COUNT 4 on one Ingest replica), and keeps ``--streams`` sync requests of it in
flight. Then the quiet key sends ``--clips`` short clips one after another to the sync route,
and one short job. Reported: the quiet key's sync latency (median, worst) against the same
clips sent alone before the flood and against plain faster-whisper on them, the quiet job's
wait from submission to start, and the flood's own throughput (audio seconds of its jobs
done per second, over ``--window`` seconds from when the quiet key starts): fairness must not
cost the flood its speed either. One model replica, pinned; the flood is cancelled then.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import plain_sequential, service_env, service_options, short_clips
from tests.support import speech
from tests.support.serve_process import serve_run

URL = "amqp://guest:guest@127.0.0.1:5672/"
FLOOD, QUIET = "flood-key", "quiet-key"
PINNED = {
    "Ingest": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    "TranscriberCPU": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
}


async def _sync(client: httpx.AsyncClient, key: str, clip: tuple[str, bytes]) -> float:
    started = time.perf_counter()
    answer = await client.post(
        "/v1/audio/transcriptions",
        files={"file": clip},
        data={"language": "en"},
        headers={"Authorization": f"Bearer {key}"},
    )
    answer.raise_for_status()
    return time.perf_counter() - started


async def _job(client: httpx.AsyncClient, key: str, clip: Path) -> str:
    answer = await client.post(
        "/v1/jobs",
        json={"audio_file_path": str(clip), "language": "en"},
        headers={"Authorization": f"Bearer {key}"},
    )
    answer.raise_for_status()
    job_id: str = answer.json()["id"]
    return job_id


async def _read(client: httpx.AsyncClient, key: str, job_id: str) -> dict[str, Any]:
    answer = await client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    answer.raise_for_status()
    job: dict[str, Any] = answer.json()
    return job


async def _measure(
    url: str, long_clip: Path, clips: list[Path], args: argparse.Namespace
) -> dict[str, Any]:
    sent = [(clip.name, clip.read_bytes()) for clip in [long_clip, *clips]]
    long_file, short_files = sent[0], sent[1:]
    async with httpx.AsyncClient(base_url=url, timeout=1800) as client:
        # The first warms up; the last is the quiet job's.
        solo = [await _sync(client, QUIET, clip) for clip in short_files[:-1]]
        flood_jobs = [await _job(client, FLOOD, long_clip) for _ in range(args.flood)]
        streams = [
            asyncio.create_task(_sync(client, FLOOD, long_file)) for _ in range(args.streams)
        ]
        await asyncio.sleep(args.settle)  # the flood's jobs and requests reach the replica
        before = await _done_audio(client, flood_jobs)
        started = time.perf_counter()
        quiet_job = await _job(client, QUIET, clips[-1])
        flooded = [await _sync(client, QUIET, clip) for clip in short_files[1:-1]]
        for _ in range(3600):  # half an hour at most
            if (job := await _read(client, QUIET, quiet_job))["status"] == "completed":
                break
            await asyncio.sleep(0.5)
        # The flood's speed over the same window in both modes (units end every few seconds).
        await asyncio.sleep(max(0.0, started + args.window - time.perf_counter()))
        took = time.perf_counter() - started
        after = await _done_audio(client, flood_jobs)
        for task in streams:
            task.cancel()
        for job_id in flood_jobs:
            await client.delete(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {FLOOD}"})
    waited = (_at(job["started_at"]) - _at(job["created_at"])).total_seconds()
    return {
        "solo": solo[1:],
        "flooded": flooded,
        "job_wait_s": waited,
        "flood_audio_per_s": (after - before) / took,
    }


async def _done_audio(client: httpx.AsyncClient, job_ids: list[str]) -> float:
    """Audio seconds of the flood's jobs transcribed so far."""
    jobs = [await _read(client, FLOOD, job_id) for job_id in job_ids]
    return sum(float(job.get("processed_seconds") or 0) for job in jobs)


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--flood", type=int, default=12, help="long jobs the flood key submits")
    parser.add_argument("--streams", type=int, default=2, help="its sync requests in flight")
    parser.add_argument("--clips", type=int, default=8, help="short clips the quiet key sends")
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--window", type=float, default=120.0, help="the flood's speed window")
    service_options(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio = work / "audio"
        audio.mkdir()
        long_clip, _ = speech.four_minutes(audio)
        clips = [path for path, _ in short_clips(audio, args.clips + 2)]
        plain = plain_sequential(args.model, work / "models", language="en")
        raw = []
        for clip in clips[:-1]:
            began = time.perf_counter()
            plain(clip)
            raw.append(time.perf_counter() - began)
        figures: dict[bool, dict[str, Any]] = {}
        for fair in (True, False):
            env = service_env(args.model, work / str(fair), audio, URL, args.env)
            env.update(
                API_KEYS=f"{FLOOD},{QUIET}",
                API_KEY_AUDIO_ROOTS=json.dumps({FLOOD: [str(audio)], QUIET: [str(audio)]}),
                FAIR_SHARES=str(fair).lower(),
                WORKERS_COUNT="4",
                MAX_BACKLOG_AUDIO_SEC="0",
                MAX_TOTAL_BACKLOG_AUDIO_SEC="0",
            )
            (work / str(fair)).mkdir()
            with serve_run(work / str(fair), env, deployments=PINNED) as (url, _, _):
                figures[fair] = asyncio.run(_measure(url, long_clip, clips, args))
    _report(args, raw[1:], figures)


def _report(
    args: argparse.Namespace, raw: list[float], figures: dict[bool, dict[str, Any]]
) -> None:
    print(
        f"\n{args.model}, 1 model replica, flood: {args.flood} jobs of 4 min + "
        f"{args.streams} sync requests of 4 min in flight; quiet: {args.clips} clips of "
        f"2-10 s (median {statistics.median(raw):.2f} s in plain faster-whisper)\n"
    )
    print(
        "| scheduling | quiet clip alone (median) | quiet clip in the flood (median / worst) "
        "| flooded / alone | quiet job's wait to start | flood's audio s per s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for fair, row in figures.items():
        alone, flooded = statistics.median(row["solo"]), statistics.median(row["flooded"])
        print(
            f"| {'fair shares' if fair else 'first come first served'} | {alone:.2f} s | "
            f"{flooded:.2f} s / {max(row['flooded']):.2f} s | {flooded / alone:.1f}x | "
            f"{row['job_wait_s']:.1f} s | {row['flood_audio_per_s']:.1f} |"
        )
    for fair, row in figures.items():
        each = ", ".join(f"{s:.2f}" for s in row["flooded"])
        print(f"\n{'fair shares' if fair else 'first come first served'}: each clip {each} s")


if __name__ == "__main__":
    main()
