"""Diarization through the real app: its Diarizer deployment starts on the first request, runs
beside transcription, and speakers reach every interface (sync, jobs, AMQP results)."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydub import AudioSegment

from serve_app.schemas import Word
from tests.integration.conftest import API_KEY, RABBITMQ_URL, Service
from tests.support import amqp, speech
from tests.support.conversation import SpokenTurn, conversation, reference_clip, turn_agreement


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


def _wait_for(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def finished() -> bool:
        status = client.get(f"/v1/jobs/{job_id}").json()["status"]
        return status in ("completed", "failed")

    speech.wait_until(finished, 300, f"job {job_id} to finish")
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def _data_url(wav: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav.read_bytes()).decode()


def test_known_speakers_are_named_through_the_openai_sdk(
    service: Service, talk: tuple[Path, list[SpokenTurn]], tmp_path: Path
) -> None:
    """Beth and Chen sent as reference clips name their speakers; Alice keeps a letter. The
    same through a multipart job; and clips that cannot name anyone are a 422."""
    wav, turns = talk
    client = openai.OpenAI(
        base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0, timeout=300
    )
    references = {name: reference_clip(name.lower(), tmp_path) for name in ("Beth", "Chen")}
    named = {
        "known_speaker_names": list(references),
        "known_speaker_references": [_data_url(clip) for clip in references.values()],
    }
    with open(wav, "rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="diarized_json", extra_body=named
        )
    segments = result.model_dump()["segments"]
    said: dict[str, set[str]] = {}
    for turn in turns:
        middle = [s["speaker"] for s in segments if turn.start <= s["start"] < turn.end]
        said.setdefault(turn.speaker, set()).update(middle)
    assert said == {"alice": {"A"}, "beth": {"Beth"}, "chen": {"Chen"}}, said
    with service.client(timeout=300) as http:
        with open(wav, "rb") as f:
            submitted = http.post(
                "/v1/jobs",
                files={"file": (wav.name, f)},
                data={"diarize": "true", **{f"{k}[]": v for k, v in named.items()}},
            )
        assert submitted.status_code == 202, submitted.text
        job = _wait_for(http, submitted.json()["id"])
    assert {s["speaker"] for s in job["result"]["segments"]} == {"A", "Beth", "Chen"}
    assert [s["name"] for s in job["options"]["known_speakers"]] == ["Beth", "Chen"]
    short = tmp_path / "short.wav"
    AudioSegment.from_wav(references["Beth"])[:1200].export(short, format="wav")
    for bad, message in [
        ({"known_speaker_names": ["Beth"]}, "1 known_speaker_names for 0"),
        ({**named, "known_speaker_references": [_data_url(short)] * 2}, "1.2 s long"),
        ({**named, "known_speaker_references": ["data:text/plain;base64,aGk="] * 2}, "not audio"),
    ]:
        with open(wav, "rb") as f, pytest.raises(openai.UnprocessableEntityError) as info:
            client.audio.transcriptions.create(
                model="whisper-1", file=f, response_format="diarized_json", extra_body=bad
            )
        assert (
            message in info.value.message
            and info.value.param
            and "known_speaker" in (info.value.param)
        ), info.value.message
