"""Long audio and bursts: the service against plain faster-whisper, same machine, same run.

    .venv/bin/python -m bench.long_audio [--model base] [--clips 40] [--replicas 1 2]

Inputs: (a) one recording of at least 8 minutes (the en_long text read by two voices, with
pauses between paragraphs); (b) a burst of 40 one-sentence clips (2-10 s) submitted at once.
Baselines: WhisperModel.transcribe (beam 5, VAD on: the seeds' way) and
BatchedInferencePipeline (batch 8), each run alone. The service runs `serve_config.yaml` with
the CPU pool fixed at 1, then 2 replicas, measured end to end over HTTP and over AMQP.
Prints audio seconds per wall second, ratios to both baselines, WER, and replica peak memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import (
    duration,
    plain_batched,
    plain_sequential,
    replica_peak_memory_mb,
    short_clips,
)
from tests.support import amqp, speech
from tests.support.serve_process import serve_run

URL = "amqp://guest:guest@127.0.0.1:5672/"
Clip = tuple[Path, str]


@dataclass
class Row:
    name: str
    workload: str
    audio_s: float
    wall_s: float
    wer: float

    @property
    def speed(self) -> float:
        return self.audio_s / self.wall_s


def _plain(
    name: str,
    transcribe: Callable[[Path], str],
    long: Clip,
    burst: list[Clip],
    long_s: float,
    burst_s: float,
) -> list[Row]:
    transcribe(burst[0][0])  # warm-up, as the service gets
    started = time.perf_counter()
    long_wer = speech.word_error_rate(long[1], transcribe(long[0]))
    long_row = Row(name, "long", long_s, time.perf_counter() - started, long_wer)
    started = time.perf_counter()
    wers = [speech.word_error_rate(text, transcribe(path)) for path, text in burst]
    burst_row = Row(name, "burst", burst_s, time.perf_counter() - started, statistics.mean(wers))
    return [long_row, burst_row]


def _http(client: httpx.Client, path: Path) -> str:
    with open(path, "rb") as f:
        response = client.post("/v1/audio/transcriptions", files={"file": (path.name, f)})
    response.raise_for_status()
    text: str = response.json()["text"]
    return text


def _service(
    replicas: int,
    model: str,
    long: Clip,
    burst: list[Clip],
    long_s: float,
    burst_s: float,
    work: Path,
) -> tuple[list[Row], list[float]]:
    env = {
        "WHISPER_MODEL": model,
        "MODELS_DIR": str(work.parent / "models"),
        "DATA_DIR": str(work / "data"),
        "ALLOWED_AUDIO_ROOTS": str(long[0].parent),
        "RABBITMQ_URL": URL,
    }
    fixed = {"TranscriberCPU": {"num_replicas": replicas, "autoscaling_config": None}}
    rows: list[Row] = []
    label = f"service {replicas} replica{'s' if replicas > 1 else ''}"
    work.mkdir()
    with (
        serve_run(work, env, deployments=fixed) as (url, _, _),
        httpx.Client(base_url=url, timeout=1800) as client,
    ):
        collector = amqp.ResultCollector(URL)
        try:
            # Warm both paths first: the short one, and the long one (the Gateway's VAD model,
            # the replicas' batched decoding). Cold, the first long file took 26 s against 18 s.
            _http(client, burst[0][0])
            _http(client, long[0])
            started = time.perf_counter()
            text = _http(client, long[0])
            rows.append(
                Row(
                    f"{label} HTTP",
                    "long",
                    long_s,
                    time.perf_counter() - started,
                    speech.word_error_rate(long[1], text),
                )
            )
            started = time.perf_counter()
            with ThreadPoolExecutor(len(burst)) as pool:
                texts = list(pool.map(lambda c: _http(client, c[0]), burst))
            rows.append(
                Row(
                    f"{label} HTTP",
                    "burst",
                    burst_s,
                    time.perf_counter() - started,
                    statistics.mean(
                        speech.word_error_rate(t, h) for (_, t), h in zip(burst, texts, strict=True)
                    ),
                )
            )
            base = 2 * 10**9 + int(time.time()) % 10**6 * 100
            started = time.perf_counter()
            amqp.publish(URL, {"attachment_id": base, "audio_file_path": str(long[0])})
            result = collector.wait(base, timeout=1800)
            rows.append(
                Row(
                    f"{label} AMQP",
                    "long",
                    long_s,
                    time.perf_counter() - started,
                    speech.word_error_rate(long[1], result["texto"]),
                )
            )
            ids = [base + 1 + i for i in range(len(burst))]
            started = time.perf_counter()
            amqp.publish(
                URL,
                *(
                    {"attachment_id": i, "audio_file_path": str(p)}
                    for i, (p, _) in zip(ids, burst, strict=True)
                ),
            )
            results = [collector.wait(i, timeout=1800) for i in ids]
            rows.append(
                Row(
                    f"{label} AMQP",
                    "burst",
                    burst_s,
                    time.perf_counter() - started,
                    statistics.mean(
                        speech.word_error_rate(t, r["texto"])
                        for (_, t), r in zip(burst, results, strict=True)
                    ),
                )
            )
            memory = replica_peak_memory_mb()
        finally:
            collector.close()
    return rows, memory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="base")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio_dir = work / "audio"
        wav, reference = speech.long_recording("en_long", audio_dir, voices=("en-us", "en-gb"))
        long = (speech.encode(wav, ".mp3", audio_dir), reference)
        burst = short_clips(audio_dir, args.clips)
        long_s = duration(long[0])
        burst_s = sum(duration(p) for p, _ in burst)
        rows = _plain(
            "plain sequential",
            plain_sequential(args.model, work / "models"),
            long,
            burst,
            long_s,
            burst_s,
        )
        rows += _plain(
            "plain batched(8)",
            plain_batched(args.model, work / "models"),
            long,
            burst,
            long_s,
            burst_s,
        )
        memory: dict[int, list[float]] = {}
        for replicas in args.replicas:
            service_rows, memory[replicas] = _service(
                replicas, args.model, long, burst, long_s, burst_s, work / f"r{replicas}"
            )
            rows += service_rows

    base = {(r.name, r.workload): r.speed for r in rows if r.name.startswith("plain")}
    print(f"machine: {os.cpu_count()} cores; model {args.model} int8 on CPU")
    print(f"(a) long: {long_s:.0f} s mp3; (b) burst: {len(burst)} clips, {burst_s:.0f} s in all")
    print(
        f"{'run':28s} {'input':6s} {'audio s/wall s':>14s} {'vs seq':>7s} {'vs batched':>10s}"
        f" {'WER':>6s}"
    )
    for r in rows:
        seq = r.speed / base[("plain sequential", r.workload)]
        bat = r.speed / base[("plain batched(8)", r.workload)]
        print(f"{r.name:28s} {r.workload:6s} {r.speed:14.2f} {seq:6.2f}x {bat:9.2f}x {r.wer:6.3f}")
    for replicas, peaks in memory.items():
        print(
            f"peak memory per replica with {replicas}: " + ", ".join(f"{m:.0f} MB" for m in peaks)
        )


if __name__ == "__main__":
    main()
