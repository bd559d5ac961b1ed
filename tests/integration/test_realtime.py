"""Live audio against the real app: the official openai SDK's realtime client, unchanged, and a
raw WebSocket client for what the SDK would not send."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from serve_app.realtime.pcm import LiveAudio
from tests.integration.conftest import API_KEY, Service
from tests.support.live import LiveAudioClip, Transcripts, first_turns, long_turns
from tests.support.serve_process import paused
from tests.support.speech import word_error_rate

SESSION = {
    "type": "transcription",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
        }
    },
}


async def stream_at_real_speed(conn: Any, clip: LiveAudioClip, chunk_ms: int = 100) -> None:
    started = time.monotonic()
    for n, audio in enumerate(clip.appends(chunk_ms)):
        await conn.input_audio_buffer.append(audio=audio)
        await asyncio.sleep(max(0.0, started + (n + 1) * chunk_ms / 1000 - time.monotonic()))


async def test_the_openai_sdk_gets_deltas_while_each_turn_is_spoken(
    service: Service, tmp_path: Path
) -> None:
    clip = long_turns(tmp_path)
    client = openai.AsyncOpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0)
    seen = Transcripts()
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = await conn.recv()
        assert created.type == "session.created"
        session = {**SESSION, "include": ["item.input_audio_transcription.logprobs"]}
        await conn.session.update(session=session)  # type: ignore[arg-type]
        sender = asyncio.create_task(stream_at_real_speed(conn, clip))
        deadline = time.monotonic() + 120
        completed = []
        while len(seen.completed) < len(clip.turns):
            assert time.monotonic() < deadline, f"events so far: {seen.order}"
            event = await asyncio.wait_for(conn.recv(), deadline - time.monotonic())
            seen.take(event.model_dump())
            if event.type == "conversation.item.input_audio_transcription.completed":
                completed.append(event)
        await sender
    assert not seen.errors, seen.errors
    assert ("session.updated", None) in seen.order
    items = seen.items()
    assert len(items) == len(clip.turns)
    for item in items:
        assert seen.deltas_before_stop(item) >= 1, f"no delta while {item} was spoken:\n" + (
            seen.timeline()
        )
        assert "".join(seen.deltas[item]) == seen.completed[item]
    for event in completed:  # include: the tokens of the turn, with their log probabilities
        assert event.logprobs, event
        assert "".join(t.token for t in event.logprobs).strip() == event.transcript.strip()
    # The same audio as a file, through the same service.
    wav = clip.wav(tmp_path / "live.wav")
    async with httpx.AsyncClient(base_url=service.url, timeout=120) as http:
        answer = await http.post(
            "/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            files={"file": ("live.wav", wav.read_bytes(), "audio/wav")},
            data={"model": "whisper-1", "language": "en"},
        )
    answer.raise_for_status()
    # Live is about as good as the file (8 points of WER at most), measured against the script:
    # tiny.en mishears each its own way (the file once gave "not sound free, little to me"
    # where live had it right: 0.153 between them, with live the better).
    live = " ".join(seen.completed[item] for item in items)
    script = " ".join(turn.text for turn in clip.turns)
    filed = answer.json()["text"]
    errors = word_error_rate(script, live), word_error_rate(script, filed)
    print(f"live: WER {errors[0]:.3f} against the script, the file {errors[1]:.3f}")
    assert errors[0] <= errors[1] + 0.08 and errors[0] <= 0.2, (errors, script, live, filed)


async def test_a_raw_client_gets_errors_and_keeps_its_session(service: Service) -> None:
    url = service.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code in (401, 403)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with connect(url, additional_headers=headers) as socket:
        assert json.loads(await socket.recv())["type"] == "session.created"
        sent = [
            "{not json",
            json.dumps({"type": "input_audio_buffer.append", "audio": "!!", "event_id": "e1"}),
            json.dumps({"type": "response.create", "event_id": "e2"}),
            json.dumps({"type": "input_audio_buffer.commit", "event_id": "e3"}),
        ]
        codes = []
        for text in sent:
            await socket.send(text)
            error = json.loads(await asyncio.wait_for(socket.recv(), 10))["error"]
            codes.append((error["code"], error["event_id"]))
        assert codes == [
            ("invalid_json", None),
            ("invalid_value", "e1"),
            ("invalid_value", "e2"),
            ("input_audio_buffer_commit_empty", "e3"),
        ]
        await socket.send(json.dumps({"type": "session.update", "session": SESSION}))
        assert json.loads(await socket.recv())["type"] == "session.updated"


CLI = Path(sys.executable).parent / "whisper-serve"


def _listen(service: Service, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    env = {"PATH": "/usr/bin:/bin", "WHISPER_SERVE_URL": service.url}
    env["WHISPER_SERVE_API_KEY"] = API_KEY
    run = subprocess.run(
        [str(CLI), "listen", *args], input=stdin, env=env, capture_output=True, timeout=120
    )
    return run.returncode, run.stdout.decode(), run.stderr.decode()


def test_listen_prints_each_turn_on_its_own_line_from_a_file_or_stdin(
    service: Service, tmp_path: Path
) -> None:
    clip = first_turns(tmp_path)
    wav = clip.wav(tmp_path / "two_turns.wav")
    code, out, err = _listen(service, str(wav), "--speed", "2", "--language", "en")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(clip.turns), out
    for line, turn in zip(lines, clip.turns, strict=True):
        assert word_error_rate(turn.text, line) <= 0.25, (turn.text, line)
    # Raw PCM at 16 kHz on stdin, as fast as it comes, one turn in all without server VAD.
    samples = np.frombuffer(clip.pcm, "<i2")
    at_16k = LiveAudio("audio/pcm").push(clip.pcm)
    raw = (np.clip(at_16k, -1, 1) * 32767).astype("<i2").tobytes()
    assert len(raw) == pytest.approx(len(samples) * 2 * 2 / 3, rel=0.01)
    code, out, err = _listen(service, "-", "--rate", "16000", "--no-vad", stdin=raw)
    assert code == 0, err
    said = " ".join(turn.text for turn in clip.turns)
    assert len(out.splitlines()) == 1 and word_error_rate(said, out) <= 0.25, out


async def test_a_turn_whose_model_replicas_die_is_decoded_by_their_successors(
    service: Service, tmp_path: Path
) -> None:
    clip = first_turns(tmp_path, 1)
    url = service.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    manual = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
    ended: dict[str, Any] = {}
    async with connect(url, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as socket:
        assert json.loads(await socket.recv())["type"] == "session.created"
        await socket.send(json.dumps({"type": "session.update", "session": manual}))
        assert json.loads(await socket.recv())["type"] == "session.updated"
        for audio in clip.appends(100):  # 5 s at once: within the first minute's burst
            await socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        pids = service.replica_pids("TranscriberCPU")
        assert pids
        with paused(pids):  # no decode can finish before the kill
            await socket.send(json.dumps({"type": "input_audio_buffer.commit"}))
            kinds = {json.loads(await socket.recv())["type"] for _ in range(2)} - {
                "conversation.item.input_audio_transcription.delta"
            }
            assert "input_audio_buffer.committed" in kinds
            # The final decode goes to a replica within ms of the commit: the kill finds it
            # in flight there.
            await asyncio.sleep(0.5)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not ended:
            event = json.loads(await asyncio.wait_for(socket.recv(), deadline - time.monotonic()))
            if event["type"].endswith(("transcription.completed", "transcription.failed")):
                ended = event
    assert ended["type"].endswith(".completed"), ended
    assert word_error_rate(clip.turns[0].text, ended["transcript"]) <= 0.25, ended
    # Where the final decode had reached a replica, its loss shows as a retry in the log;
    # where Serve's router still held it (a stopped replica answers no queue probe), the
    # successor simply got it. Either way the turn is decoded; the retry itself is tested in
    # tests/unit/test_realtime_session.py.
    # Later tests find the pool whole again.
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        while (await http.get("/health")).status_code != 200:
            assert time.monotonic() < deadline, "the model pool did not come back"
            await asyncio.sleep(0.5)
