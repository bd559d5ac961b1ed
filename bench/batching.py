"""Issue 12's targets in one run: batching across requests against plain faster-whisper and
against the service as it was before (each request alone, one model call at a time).

    .venv/bin/python -m bench.batching [--model base] [--clips 40]

Columns: plain faster-whisper; the service as configured ("batched"); one CPU replica (all
cores, no autoscaling) and one Ingest replica with WORKERS_COUNT and the replica's
max_ongoing_requests at --wide (16), so more jobs are in flight to batch and pack ("wide");
WHISPER_CROSS_BATCH=false and WHISPER_NUM_WORKERS=1 with the deployments as they were
configured then ("alone": each request decoded alone, one at a time per replica, as the service
did before batching across requests).

Inputs: a burst of 40 clips of 2-30 s (one to six synthesized sentences each, three speaking
rates), published at once over AMQP with `"language": "en"`; the 8-minute two-voice file;
one 5 s clip alone. Baselines, in this process: WhisperModel.transcribe one clip after another
(beam 5, VAD on, language en: the seeds' way) and BatchedInferencePipeline (batch 8) on the
long file, both before Ray starts; the lone clip also by the plain loop in turns with each
service, with the service up. Each service variant is a fresh `serve run` of serve_config.yaml,
so its first long file is a cold one. Prints the ratios the issue asks for.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import (
    duration,
    plain_batched,
    plain_sequential,
    publish_burst,
    replica_peak_memory_mb,
)
from bench.long_audio import URL
from tests.support import amqp, speech
from tests.support.serve_process import serve_run

Clip = tuple[Path, str]


@dataclass
class Figures:
    burst_s: float = 0.0
    burst_wer: float = 0.0
    long_cold_s: float = 0.0
    long_http_s: float = 0.0
    long_amqp_s: float = 0.0
    long_wer: float = 0.0
    lone_s: float = 0.0
    # Plain's lone clip timed in turns with the service's, with the service up.
    lone_plain_s: float = 0.0
    segments: list[float] = field(default_factory=list)
    memory_mb: list[float] = field(default_factory=list)


def mixed_clips(out: Path, count: int) -> list[Clip]:
    """One to six consecutive sentences each: 2-30 s at 150-170 words a minute."""
    from bench.common import sentences

    pool = sentences()
    sizes = [1, 3, 2, 5, 1, 4, 6, 2]
    clips, at = [], 0
    for i in range(count):
        size = sizes[i % len(sizes)]
        text = " ".join(pool[(at + k) % len(pool)] for k in range(size))
        at += size
        wav = speech.speak(text, "en-us", out / f"mixed{i:02d}.wav", 150 + 10 * (i % 3))
        clips.append((speech.encode(wav, ".mp3", out), text))
    return clips


def _timed(fn: Callable[[], str]) -> tuple[float, str]:
    started = time.perf_counter()
    text = fn()
    return time.perf_counter() - started, text


def plain(
    sequential: Callable[[Path], str],
    model: str,
    models_dir: Path,
    burst: list[Clip],
    long: Clip | None,
    lone: Path,
) -> Figures:
    sequential(lone)  # warm-up, as the service gets
    figures = Figures()
    started = time.perf_counter()
    wers = [speech.word_error_rate(text, sequential(path)) for path, text in burst]
    figures.burst_s, figures.burst_wer = time.perf_counter() - started, statistics.mean(wers)
    lone_runs = [_timed(lambda: sequential(lone))[0] for _ in range(LONE_RUNS)]
    figures.lone_s = statistics.median(lone_runs)
    if long is None:
        return figures
    batched = plain_batched(model, models_dir)
    batched(lone)
    figures.long_http_s, text = _timed(lambda: batched(long[0]))
    figures.long_wer = speech.word_error_rate(long[1], text)
    return figures


def sequential_long(model: str, models_dir: Path, long: Clip) -> tuple[float, list[float]]:
    """WER and segment lengths of plain sequential decoding on the long file."""
    from faster_whisper import WhisperModel

    from serve_app.model.weights import resolve_model_path

    whisper = WhisperModel(resolve_model_path(model, models_dir), device="cpu", compute_type="int8")
    segments, _ = whisper.transcribe(str(long[0]), beam_size=5, vad_filter=True, language="en")
    found = list(segments)
    text = " ".join(s.text.strip() for s in found)
    return speech.word_error_rate(long[1], text), [s.end - s.start for s in found]


def service(
    model: str,
    work: Path,
    extra_env: dict[str, str],
    burst: list[Clip],
    long: Clip | None,
    lone: Path,
    plain_lone: Callable[[Path], str],
    deployments: dict[str, dict[str, object]] | None = None,
) -> Figures:
    env = {
        "WHISPER_MODEL": model,
        "MODELS_DIR": str(work / "models"),
        "DATA_DIR": str(work / f"data-{len(os.listdir(work))}"),
        "ALLOWED_AUDIO_ROOTS": str(lone.parent),
        "RABBITMQ_URL": URL,
        **extra_env,
    }
    figures = Figures()
    with (
        serve_run(work, env, deployments=deployments) as (url, _, _),
        httpx.Client(base_url=url, timeout=1800) as client,
    ):
        collector = amqp.ResultCollector(URL)
        try:

            def http(path: Path, **form: str) -> dict[str, object]:
                with open(path, "rb") as f:
                    response = client.post(
                        "/v1/audio/transcriptions", files={"file": (path.name, f)}, data=form
                    )
                response.raise_for_status()
                body: dict[str, object] = response.json()
                return body

            base = 5 * 10**9 + int(time.time()) % 10**6 * 1000
            if long is not None:
                figures.long_cold_s, _ = _timed(lambda: str(http(long[0])["text"]))
                started = time.perf_counter()
                verbose = http(long[0], response_format="verbose_json", language="en")
                figures.long_http_s = time.perf_counter() - started
                figures.long_wer = speech.word_error_rate(long[1], str(verbose["text"]))
                segments = verbose["segments"]
                assert isinstance(segments, list)
                figures.segments = [s["end"] - s["start"] for s in segments]
                started = time.perf_counter()
                amqp.publish(URL, {"attachment_id": base, "audio_file_path": str(long[0])})
                collector.wait(base, timeout=1800)
                figures.long_amqp_s = time.perf_counter() - started
            # In turns with plain faster-whisper in this process: both share the machine with
            # the idle service (Ray's processes), and a drift in its speed hits both alike.
            plain_s, service_s = [], []
            for _ in range(LONE_RUNS):
                plain_s.append(_timed(lambda: plain_lone(lone))[0])
                service_s.append(_timed(lambda: str(http(lone, language="en")["text"]))[0])
            figures.lone_plain_s = statistics.median(plain_s)
            figures.lone_s = statistics.median(service_s)
            figures.burst_s, results = publish_burst(
                URL, collector, [p for p, _ in burst], base + 1
            )
            assert all(r["success"] for r in results), [r for r in results if not r["success"]]
            figures.burst_wer = statistics.mean(
                speech.word_error_rate(t, r["texto"])
                for (_, t), r in zip(burst, results, strict=True)
            )
            figures.memory_mb = replica_peak_memory_mb()
        finally:
            collector.close()
    return figures


LONE_RUNS = 5
BEFORE_ISSUE_12: dict[str, dict[str, object]] = {
    "Ingest": {"num_replicas": 1},
    "TranscriberCPU": {
        "max_ongoing_requests": 4,
        "autoscaling_config": {"target_ongoing_requests": 2},
    },
}


def plain_process_memory_mb() -> float:
    """Peak resident memory of this process, which ran both plain baselines."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="base")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--wide", type=int, default=16, help="WORKERS_COUNT of the wide run")
    parser.add_argument("--burst-only", action="store_true", help="skip the long file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio_dir = work / "audio"
        burst = mixed_clips(audio_dir, args.clips)
        long: Clip | None = None
        seq_wer, seq_segments = 0.0, [0.0]
        if not args.burst_only:
            wav, text = speech.long_recording("en_long", audio_dir, voices=("en-us", "en-gb"))
            long = (speech.encode(wav, ".mp3", audio_dir), text)
        lone = burst[0][0]
        lengths = [duration(p) for p, _ in burst]
        long_s, lone_s = (duration(long[0]) if long else 0.0), duration(lone)
        sequential = plain_sequential(args.model, work / "models", language="en")
        base = plain(sequential, args.model, work / "models", burst, long, lone)
        if long is not None:
            seq_wer, seq_segments = sequential_long(args.model, work / "models", long)
        plain_mb = plain_process_memory_mb()
        batched = service(args.model, work, {}, burst, long, lone, sequential)
        # One replica with every core, holding more jobs at once to batch and pack.
        wide = service(
            args.model,
            work,
            {"WORKERS_COUNT": str(args.wide)},
            burst,
            long,
            lone,
            sequential,
            {
                "Ingest": {"num_replicas": 1},
                "TranscriberCPU": {
                    "max_ongoing_requests": args.wide,
                    "num_replicas": 1,
                    "autoscaling_config": None,
                },
            },
        )
        # The service as it was before issue 12: each request alone, one model call at a time,
        # one Ingest replica, and a CPU pool that scaled out at two requests a replica.
        before = {"WHISPER_CROSS_BATCH": "false", "WHISPER_NUM_WORKERS": "1"}
        alone = service(args.model, work, before, burst, long, lone, sequential, BEFORE_ISSUE_12)

    burst_audio = sum(lengths)
    print(f"machine: {os.cpu_count()} cores; model {args.model} int8 on CPU")
    print(
        f"burst: {len(burst)} clips, {min(lengths):.1f}-{max(lengths):.1f} s, "
        f"{burst_audio:.0f} s in all; long file {long_s:.0f} s; lone clip {lone_s:.1f} s"
    )
    print(f"{'':34s} {'plain':>9s} {'batched':>9s} {'wide':>9s} {'alone':>9s}")
    columns = (batched, wide, alone)

    def row(name: str, plain: float, pick: Callable[[Figures], float], unit: str = "s") -> None:
        cells = " ".join(f"{pick(f):8.2f}{unit}" for f in columns)
        print(f"{name:34s} {plain:8.2f}{unit} {cells}")

    row("burst over AMQP, wall", base.burst_s, lambda f: f.burst_s)
    row("burst mean WER", base.burst_wer, lambda f: f.burst_wer, " ")
    row("lone clip latency", base.lone_s, lambda f: f.lone_s)
    row("  plain's, in turns with it", base.lone_s, lambda f: f.lone_plain_s)
    if long is not None:
        row("long warm HTTP, wall", base.long_http_s, lambda f: f.long_http_s)
        row("long warm AMQP, wall", base.long_http_s, lambda f: f.long_amqp_s)
        row("long cold HTTP (first after start)", base.long_http_s, lambda f: f.long_cold_s)
        row("long WER", base.long_wer, lambda f: f.long_wer, " ")
    print()
    print("targets (batched service):")
    print(f"  burst vs plain sequential loop: {base.burst_s / batched.burst_s:.2f}x (>= 2.5x)")
    print(f"  burst vs service without batching: {alone.burst_s / batched.burst_s:.2f}x (>= 1.3x)")
    print(
        f"  wide (WORKERS_COUNT={args.wide}): burst {base.burst_s / wide.burst_s:.2f}x the loop, "
        f"{alone.burst_s / wide.burst_s:.2f}x the service without batching"
    )
    print(
        f"  lone clip: {1000 * (batched.lone_s - base.lone_s):+.0f} ms vs plain before Ray, "
        f"{1000 * (batched.lone_s - batched.lone_plain_s):+.0f} ms vs plain in turns with it "
        f"(<= +50 ms); without batching {1000 * (alone.lone_s - alone.lone_plain_s):+.0f} ms"
    )
    if long is not None:
        _long_targets(base, batched, seq_wer, seq_segments)
    memory = ", ".join(f"{m:.0f}" for m in batched.memory_mb)
    print(
        f"  replica peak memory {memory} MB vs plain process {plain_mb:.0f} MB (<= plain + 250 MB)"
    )


def _long_targets(
    base: Figures, batched: Figures, seq_wer: float, seq_segments: list[float]
) -> None:
    print(
        f"  long warm vs plain batched: HTTP {base.long_http_s / batched.long_http_s:.2f}x, "
        f"AMQP {base.long_http_s / batched.long_amqp_s:.2f}x (>= 1.0x); "
        f"cold {base.long_http_s / batched.long_cold_s:.2f}x (>= 0.9x)"
    )
    print(
        f"  cold vs warm, same service: {batched.long_cold_s / batched.long_http_s:.2f}x "
        "the warm time (<= 1.10x)"
    )
    segs = batched.segments
    print(
        f"  long-file segments: {len(segs)}, median {statistics.median(segs):.1f} s, "
        f"max {max(segs):.1f} s (median <= 10, max <= 20); plain sequential: "
        f"{len(seq_segments)}, median {statistics.median(seq_segments):.1f} s"
    )
    print(
        f"  long-file WER {batched.long_wer:.3f} vs plain sequential {seq_wer:.3f} "
        f"({100 * (batched.long_wer - seq_wer):+.1f} points; within 1)"
    )


if __name__ == "__main__":
    main()
