"""`whisper-serve listen FILE|-`: live transcription over /v1/realtime. A file is decoded here
and streamed at real speed (or --speed times it); `-` reads raw 16-bit mono PCM from stdin as
it comes (a microphone through `arecord -f S16_LE -r 24000 -c 1`, or `ffmpeg ... -f s16le -`).
Deltas are printed as they arrive, so each turn's text grows on its own line and the line is
ended when the turn completes: what the deltas printed is the turn's final text."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.console import Console
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from serve_app.cli.http import FAILED, CliError

RATE = 24000  # OpenAI's realtime PCM: 24 kHz, 16-bit, mono
CHUNK_S = 0.1
_TIMEOUT_S = 300  # for what is outstanding once the audio has all been sent


@dataclass(frozen=True)
class Listening:
    language: str | None
    model: str | None
    vad: bool
    silence_ms: int
    speed: float  # 1.0: real time; files only
    input_rate: int  # of raw PCM on stdin


def realtime_url(base: str) -> str:
    scheme, sep, rest = base.rstrip("/").partition("://")
    ws = {"http": "ws", "https": "wss"}.get(scheme.lower())
    if not sep or ws is None:
        raise CliError(f"The service URL must start with http:// or https://: {base}", FAILED)
    return f"{ws}://{rest}/v1/realtime?intent=transcription"


def file_pcm(path: Path) -> bytes:
    """The file's first audio stream as 24 kHz mono PCM16 (decoded here, by PyAV)."""
    import av

    try:
        with av.open(str(path)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            chunks = [
                frame.to_ndarray().tobytes()
                for decoded in container.decode(audio=0)
                for frame in resampler.resample(decoded)
            ]
            chunks += [frame.to_ndarray().tobytes() for frame in resampler.resample(None)]
    except (OSError, av.error.FFmpegError, IndexError) as exc:
        raise CliError(f"Cannot read audio from {path}: {exc}", FAILED) from None
    return b"".join(chunks)


def _paced(pcm: bytes, speed: float) -> Iterator[tuple[bytes, float]]:
    """(chunk, when to send it, in seconds from the start)."""
    size = int(RATE * CHUNK_S) * 2
    for n, start in enumerate(range(0, len(pcm), size)):
        yield pcm[start : start + size], n * CHUNK_S / speed


async def _stdin_chunks(stream: IO[bytes], rate: int) -> AsyncIterator[bytes]:
    size = int(rate * CHUNK_S) * 2
    while chunk := await asyncio.to_thread(stream.read, size):
        yield chunk


def _resampled(chunk: bytes, rate: int, resampler: Any) -> bytes:
    if rate == RATE:
        return chunk
    import av

    samples = np.frombuffer(chunk[: len(chunk) // 2 * 2], "<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = rate
    return b"".join(f.to_ndarray().tobytes() for f in resampler.resample(frame))


async def listen(
    url: str, api_key: str | None, source: str, options: Listening, out: IO[str], err: Console
) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    pcm = None if source == "-" else file_pcm(Path(source))
    try:
        async with connect(realtime_url(url), additional_headers=headers, max_size=None) as ws:
            printer = asyncio.create_task(_print(ws, out, err))
            await _configure(ws, options)
            await _send_audio(ws, pcm, options)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            # Answered after the commit: once it is, every turn has been committed.
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            return await asyncio.wait_for(printer, _TIMEOUT_S)
    except InvalidStatus as exc:
        code = exc.response.status_code
        raise CliError(f"{code}: the service refused the session", FAILED) from None
    except (OSError, InvalidURI, ConnectionClosed, TimeoutError) as exc:
        raise CliError(f"Live session to {url} failed: {exc!r}", FAILED) from None


async def _configure(ws: ClientConnection, options: Listening) -> None:
    transcription = {"language": options.language, "model": options.model}
    turns = (
        {"type": "server_vad", "silence_duration_ms": options.silence_ms} if options.vad else None
    )
    session = {
        "type": "transcription",
        "audio": {
            "input": {
                "transcription": {k: v for k, v in transcription.items() if v},
                "turn_detection": turns,
            }
        },
    }
    await ws.send(json.dumps({"type": "session.update", "session": session}))


async def _send_audio(ws: ClientConnection, pcm: bytes | None, options: Listening) -> None:
    async def append(chunk: bytes) -> None:
        event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
        await ws.send(json.dumps(event))

    if pcm is not None:
        started = time.monotonic()
        for chunk, at in _paced(pcm, options.speed):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            await append(chunk)
        return
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    async for chunk in _stdin_chunks(sys.stdin.buffer, options.input_rate):
        await append(_resampled(chunk, options.input_rate, resampler))


async def _print(ws: ClientConnection, out: IO[str], err: Console) -> int:
    """Deltas inline, a newline when a turn completes; returns the exit code once the clear
    sent after the last commit is answered and every committed turn has completed."""
    failed, open_turns, done = False, set[str](), False
    async for raw in ws:
        event = json.loads(raw)
        kind = event.get("type")
        if kind == "input_audio_buffer.committed":
            open_turns.add(event["item_id"])
        elif kind == "conversation.item.input_audio_transcription.delta":
            out.write(event["delta"])
            out.flush()
        elif kind == "conversation.item.input_audio_transcription.completed":
            out.write("\n")
            out.flush()
            open_turns.discard(event["item_id"])
        elif kind == "conversation.item.input_audio_transcription.failed":
            failed = True
            open_turns.discard(event["item_id"])
            err.print(f"[red]turn failed:[/red] {event['error'].get('message')}", highlight=False)
        elif kind == "input_audio_buffer.cleared":
            done = True
        elif kind == "error":
            error = event["error"]
            # The last commit finds nothing when server VAD has ended the last turn already.
            if error.get("code") != "input_audio_buffer_commit_empty":
                failed = True
                err.print(f"[red]error:[/red] {error.get('message')}", highlight=False)
        if done and not open_turns:
            return FAILED if failed else 0
    raise CliError("The service closed the session before every turn was transcribed", FAILED)
