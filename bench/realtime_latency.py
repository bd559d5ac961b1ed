"""Live transcription latency over /v1/realtime: from the end of each spoken turn to its
``.completed`` event, and from the start of its speech to its first delta, with 1, 4 and 8
sessions streaming at real speed at once.

    .venv/bin/python -m bench.realtime_latency [--model tiny.en] [--sessions 1 4 8] [--turns 3]

Each session streams the first turns of the diarization conversation (24 kHz PCM16, 100 ms
appends) with server VAD (500 ms of silence ends a turn), starts staggered by 0.3 s. A turn's
speech starts and ends where its sound does (espeak-ng's silence around it left out). The raw
library's floor, in the same run: faster-whisper transcribing each turn's audio once, after the
turn has ended (its decode time, plus the same 500 ms of silence a VAD must hear).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect

from bench.common import plain_sequential, service_env, service_options
from tests.support.live import LiveAudioClip, first_turns
from tests.support.serve_process import serve_run

SILENCE_MS = 500
CHUNK_MS = 100


@dataclass
class Turns:
    """Per session: arrival times of each item's first delta and completion."""

    first_delta: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


async def one_session(url: str, clip: LiveAudioClip, delay_s: float) -> tuple[float, Turns]:
    await asyncio.sleep(delay_s)
    seen = Turns()
    async with connect(url, max_size=None) as socket:
        assert json.loads(await socket.recv())["type"] == "session.created"
        session = {
            "type": "transcription",
            "audio": {
                "input": {
                    "transcription": {"language": "en"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": SILENCE_MS},
                }
            },
        }
        await socket.send(json.dumps({"type": "session.update", "session": session}))
        started = time.monotonic()

        async def stream() -> None:
            for n, audio in enumerate(clip.appends(CHUNK_MS)):
                event = {"type": "input_audio_buffer.append", "audio": audio}
                await socket.send(json.dumps(event))
                await asyncio.sleep(
                    max(0.0, started + (n + 1) * CHUNK_MS / 1000 - time.monotonic())
                )

        sender = asyncio.create_task(stream())
        while len(seen.completed) < len(clip.turns):
            event = json.loads(await asyncio.wait_for(socket.recv(), 300))
            kind, item, now = event["type"], event.get("item_id"), time.monotonic()
            if kind == "input_audio_buffer.committed":
                seen.order.append(item)
            elif kind.endswith("transcription.delta"):
                seen.first_delta.setdefault(item, now)
            elif kind.endswith("transcription.completed"):
                seen.completed[item], seen.texts[item] = now, event["transcript"]
            elif kind == "error" or kind.endswith(".failed"):
                raise RuntimeError(f"session failed: {event}")
        await sender
    return started, seen


def latencies(
    clip: LiveAudioClip, runs: list[tuple[float, Turns]]
) -> tuple[list[float], list[float]]:
    to_completed, to_first_delta = [], []
    for started, seen in runs:
        for item, (speech_start, speech_end) in zip(seen.order, clip.spoken(), strict=True):
            to_completed.append(seen.completed[item] - (started + speech_end))
            if item in seen.first_delta:
                to_first_delta.append(seen.first_delta[item] - (started + speech_start))
    return to_completed, to_first_delta


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def plain_floor(model: str, work: Path, clip: LiveAudioClip) -> list[float]:
    """Seconds faster-whisper takes to transcribe each turn's audio once it has ended."""
    transcribe = plain_sequential(model, work / "models", language="en")
    times = []
    for n, turn in enumerate(clip.turns):
        path = clip.wav(work / f"turn{n}.wav", turn.start, turn.end)
        transcribe(path)  # warm
        started = time.perf_counter()
        transcribe(path)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--turns", type=int, default=3)
    service_options(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = first_turns(work, args.turns)
        env = service_env(args.model, work, work, "amqp://guest:guest@127.0.0.1:5672/", args.env)
        rows = []
        with serve_run(work, env) as (url, _, _):
            ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
            asyncio.run(one_session(ws_url, first_turns(work, 1), 0))  # warm the path
            for count in args.sessions:

                async def together(count: int = count) -> list[tuple[float, Turns]]:
                    runs = [one_session(ws_url, clip, 0.3 * i) for i in range(count)]
                    return await asyncio.gather(*runs)

                to_completed, to_first = latencies(clip, asyncio.run(together()))
                rows.append((count, to_completed, to_first))
        floor = plain_floor(args.model, work, clip)
    plain = statistics.median(floor) + SILENCE_MS / 1000
    spoken = ", ".join(f"{end - start:.1f}" for start, end in clip.spoken())
    print(
        f"machine: {os.cpu_count()} cores; model {args.model} int8 on CPU; {args.turns} turns "
        f"of {spoken} s of speech per session, streamed "
        f"at real speed in {CHUNK_MS} ms appends; server VAD, {SILENCE_MS} ms of silence"
    )
    print(
        f"raw library floor: {SILENCE_MS} ms of silence + faster-whisper on the ended turn "
        f"(median {statistics.median(floor):.2f} s) = {plain:.2f} s"
    )
    print(
        "| sessions | end of speech -> .completed, median / p95 (s) | speech -> first delta, "
        "median / p95 (s) | median / raw floor |"
    )
    print("|---:|---:|---:|---:|")
    for count, to_completed, to_first in rows:
        done = statistics.median(to_completed)
        first = f"{statistics.median(to_first):.2f} / {p95(to_first):.2f}" if to_first else "-"
        print(f"| {count} | {done:.2f} / {p95(to_completed):.2f} | {first} | {done / plain:.2f}x |")


if __name__ == "__main__":
    main()
