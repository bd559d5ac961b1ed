"""Long audio through the service: cut in silences, fanned out, batched, merged; accuracy held
against plain sequential faster-whisper with the same model on the same file."""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from serve_app.media import audio
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import TranscribeOptions
from serve_app.settings import Settings
from tests.integration.conftest import RABBITMQ_URL, Service
from tests.support import amqp, speech, sse

# The bound: the service's word error rate within 1 point of plain sequential decoding.
WER_MARGIN = 0.01


@pytest.fixture(scope="module")
def long_file(speech_dir: Path) -> tuple[Path, str]:
    return speech.four_minutes(speech_dir)


@pytest.fixture(scope="module")
def sequential_wer(long_file: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> float:
    path, reference = long_file
    settings = Settings(whisper_model="tiny.en", models_dir=tmp_path_factory.mktemp("m"))
    with open(path, "rb") as f:
        samples = audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples
    plain = Transcriber.load("tiny.en", settings).transcribe(samples, TranscribeOptions())
    return speech.word_error_rate(reference, plain.text)


def _check_timeline(segments: list[dict[str, Any]], duration: float) -> None:
    assert segments
    for a, b in itertools.pairwise(segments):
        assert a["start"] <= b["start"] and a["end"] <= b["end"] + 0.5, (a, b)
    for s in segments:
        assert 0 <= s["start"] <= s["end"] <= duration + 1e-3, s


def test_http_long_file(
    service: Service, long_file: tuple[Path, str], sequential_wer: float
) -> None:
    path, reference = long_file
    with service.client(timeout=600) as client, open(path, "rb") as f:
        response = client.post(
            "/v1/audio/transcriptions",
            files={"file": (path.name, f)},
            data={"response_format": "verbose_json", "timestamp_granularities[]": "word"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert 235 < body["duration"] < 245
    wer = speech.word_error_rate(reference, body["text"])
    assert wer <= sequential_wer + WER_MARGIN, (wer, sequential_wer)
    _check_timeline(body["segments"], body["duration"])
    words = body["words"]
    assert len(words) > 500
    assert all(a["start"] <= b["start"] + 0.05 for a, b in itertools.pairwise(words))
    assert [s["id"] for s in body["segments"]] == list(range(len(body["segments"])))


def _seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.replace(",", ".").split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def test_long_file_subtitles_are_sentence_sized(
    service: Service, long_file: tuple[Path, str]
) -> None:
    """The batched pipeline decodes a long file in 30 s windows; its SRT cues must still be
    sentences (issue 12: median <= 10 s, none over 20 s), as they are for short files."""
    path, reference = long_file
    with service.client(timeout=600) as client, open(path, "rb") as f:
        response = client.post(
            "/v1/audio/transcriptions",
            files={"file": (path.name, f)},
            data={"response_format": "srt"},
        )
    assert response.status_code == 200, response.text
    lengths, texts = [], []
    for cue in response.text.strip().split("\n\n"):
        _, timing, *text = cue.splitlines()
        start, end = (_seconds(part.strip()) for part in timing.split("-->"))
        lengths.append(end - start)
        texts.append(" ".join(text))
    print(
        f"{len(lengths)} cues: median {statistics.median(lengths):.1f} s, max {max(lengths):.1f} s"
    )
    assert statistics.median(lengths) <= 10 and max(lengths) <= 20, lengths
    assert len(lengths) > 25  # 240 s of speech, not 30 s windows
    assert speech.word_error_rate(reference, " ".join(texts)) < 0.25


def test_amqp_long_file(
    service: Service, results, long_file: tuple[Path, str], sequential_wer: float
) -> None:
    path, reference = long_file
    job = {
        "attachment_id": int(time.time() * 1000) % 10**9,
        "audio_file_path": str(path),
        "import_batch_id": 1,
    }
    amqp.publish(RABBITMQ_URL, job)
    result = results.wait(job["attachment_id"], timeout=600)
    assert result["success"] is True, result
    assert speech.word_error_rate(reference, result["texto"]) <= sequential_wer + WER_MARGIN
    assert result["language"] == "en"
    _check_timeline(result["segments"], result["duration"])


def test_long_job_streams_progress_and_segments(
    service: Service, long_file: tuple[Path, str], sequential_wer: float
) -> None:
    path, reference = long_file
    with service.client(timeout=600) as client:
        response = client.post("/v1/jobs", json={"audio_file_path": str(path)})
        assert response.status_code == 202, response.text
        events = sse.read(client, f"/v1/jobs/{response.json()['id']}/events")
    types = [e.event for e in events]
    assert types[-1] == "completed", types
    progress = [e.data["progress"] for e in events if e.event == "progress"]
    assert len(progress) >= 2 and progress == sorted(progress) and progress[-1] == 1.0
    assert 0 < progress[0] < 1, "progress moves as parts finish, not only at the end"
    segments = [e.data for e in events if e.event == "segment"]
    result = events[-1].data["result"]
    assert [s["id"] for s in segments] == list(range(len(result["segments"])))
    _check_timeline(segments, result["duration"])
    # Segments of the first parts went out before the job completed, not all at the end
    # (parts decoded in one batch finish together, in any order: not right after the first).
    last_progress = len(types) - 1 - types[::-1].index("progress")
    assert types.index("segment") < last_progress, types
    assert speech.word_error_rate(reference, result["text"]) <= sequential_wer + WER_MARGIN


def test_cancel_a_running_long_job(service: Service, long_file: tuple[Path, str], clip) -> None:
    path, _ = long_file
    with service.client(timeout=600) as client:
        job_id = client.post("/v1/jobs", json={"audio_file_path": str(path)}).json()["id"]
        sse.read(client, f"/v1/jobs/{job_id}/events", until=frozenset({"running"}))
        cancelled = client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        started = time.monotonic()
        # A short job submitted now is not stuck behind the cancelled one's remaining parts.
        with open(clip("en_office"), "rb") as f:
            quick = client.post("/v1/audio/transcriptions", files={"file": ("o.wav", f)})
        assert quick.status_code == 200
        assert time.monotonic() - started < 90
        time.sleep(2)
        job = client.get(f"/v1/jobs/{job_id}").json()
        events = sse.read(client, f"/v1/jobs/{job_id}/events")
    assert job["status"] == "cancelled" and job["result"] is None
    assert events[-1].event == "cancelled" and "completed" not in [e.event for e in events]
