"""Long audio through the service: cut in silences, fanned out, batched, merged; accuracy held
against plain sequential faster-whisper with the same model on the same file."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from serve_app import audio
from serve_app.schemas import TranscribeOptions
from serve_app.settings import Settings
from serve_app.transcriber import Transcriber
from tests.integration.conftest import RABBITMQ_URL, Service
from tests.support import amqp, speech

# The bound: the service's word error rate within 1 point of plain sequential decoding.
WER_MARGIN = 0.01


@pytest.fixture(scope="module")
def long_file(speech_dir: Path) -> tuple[Path, str]:
    wav, reference = speech.long_recording("en_long", speech_dir)
    return speech.encode(wav, ".opus", speech_dir), reference


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
