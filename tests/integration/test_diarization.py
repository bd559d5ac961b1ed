"""Diarization through the real app: its Diarizer deployment starts on the first request, runs
beside transcription, and speakers reach every interface (sync, jobs, AMQP results)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.schemas import Word
from tests.integration.conftest import RABBITMQ_URL, Service
from tests.support import amqp
from tests.support.conversation import SpokenTurn, conversation, turn_agreement


@pytest.fixture(scope="module")
def talk(speech_dir: Path) -> tuple[Path, list[SpokenTurn]]:
    folder = speech_dir / "conversation"  # under ALLOWED_AUDIO_ROOTS, for the AMQP job
    folder.mkdir(exist_ok=True)
    return conversation(folder)


def _post(client: httpx.Client, path: str, wav: Path, **fields: Any) -> httpx.Response:
    with open(wav, "rb") as f:
        return client.post(path, files={"file": (wav.name, f)}, data=fields)


def test_sync_requests_get_speakers_on_segments_and_words(
    service: Service, talk: tuple[Path, list[SpokenTurn]]
) -> None:
    wav, turns = talk
    with service.client(timeout=300) as client:
        started = time.monotonic()
        verbose = _post(
            client,
            "/v1/audio/transcriptions",
            wav,
            diarize="true",
            response_format="verbose_json",
            **{"timestamp_granularities[]": "word"},
        )
        first = time.monotonic() - started
        assert verbose.status_code == 200, verbose.text
        diarized = _post(client, "/v1/audio/transcriptions", wav, response_format="diarized_json")
        assert diarized.status_code == 200, diarized.text
    words = [Word.model_validate(w) for w in verbose.json()["words"]]
    share, labels = turn_agreement(words, turns)
    assert share >= 0.9 and len(set(labels.values())) == 3, (share, labels)
    segments = diarized.json()["segments"]
    assert {s["speaker"] for s in segments} == {"A", "B", "C"}
    assert all(s["type"] == "transcript.text.segment" and s["text"] for s in segments)
    print(f"diarization: first request (Diarizer started from zero) {first:.1f} s")


def test_a_job_and_an_amqp_request_are_diarized(
    service: Service, talk: tuple[Path, list[SpokenTurn]], results
) -> None:  # type: ignore[no-untyped-def]
    wav, _ = talk
    request = {
        "attachment_id": 6 * 10**8 + time.time_ns() % 10**8,
        "audio_file_path": str(wav),
        "diarize": True,
    }
    amqp.publish(RABBITMQ_URL, request)
    with service.client(timeout=300) as client:
        job = _post(client, "/v1/jobs", wav, diarize="true", max_speakers="3").json()
        deadline = time.monotonic() + 300
        while client.get(f"/v1/jobs/{job['id']}").json()["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, "the diarized job did not finish"
            time.sleep(0.5)
        srt = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "srt"}).text
    assert all(f"[{label}] " in srt for label in "ABC"), srt
    result = results.wait(request["attachment_id"], 300)
    assert result["success"] is True, result
    assert {s.get("speaker") for s in result["segments"]} == {"A", "B", "C"}
