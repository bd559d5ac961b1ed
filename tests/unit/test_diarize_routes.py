"""What the routes say about diarization before any audio is decoded, in-process: the real
FastAPI app over a stand-in backend installed without the `diarize` extra."""

from __future__ import annotations

import pytest

from tests.support.api_standin import StandIn, client


def _path_job(backend: StandIn, **extra: object) -> dict[str, object]:
    return {"audio_file_path": str(backend.settings.allowed_audio_roots[0] / "a.mp3"), **extra}


@pytest.mark.parametrize(
    "fields", [{"diarize": "true"}, {"response_format": "diarized_json"}, {"diarize": "1"}]
)
async def test_diarization_on_a_service_without_the_extra_is_422(
    backend: StandIn, clip, fields: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    data = clip("en_office", ".mp3").read_bytes()
    async with client(backend) as c:
        answer = await c.post(
            "/v1/audio/transcriptions", files={"file": ("a.mp3", data)}, data=fields
        )
        job = await c.post("/v1/jobs", json=_path_job(backend, diarize=True))
    assert answer.status_code == 422 and "pip install '.[diarize]'" in answer.text
    assert job.status_code == 422 and "not installed" in job.text
    assert backend.submitted == []


async def test_speaker_options_are_checked(backend: StandIn, clip) -> None:  # type: ignore[no-untyped-def]
    backend.diarization = True  # as if installed: the checks come before any model call
    data = clip("en_office", ".mp3").read_bytes()
    cases = [
        ({"min_speakers": "2"}, "need diarize=true"),
        ({"diarize": "true", "min_speakers": "3", "max_speakers": "2"}, "more than max_speakers"),
        ({"diarize": "true", "stream": "true"}, "cannot stream"),
        ({"diarize": "true", "max_speakers": "99"}, "max_speakers"),
    ]
    async with client(backend) as c:
        for fields, message in cases:
            answer = await c.post(
                "/v1/audio/transcriptions", files={"file": ("a.mp3", data)}, data=fields
            )
            assert answer.status_code == 422 and message in answer.text, (fields, answer.text)
        translation = await c.post(
            "/v1/audio/translations",
            files={"file": ("a.mp3", data)},
            data={"response_format": "diarized_json"},
        )
        job = await c.post("/v1/jobs", json=_path_job(backend, min_speakers=2))
    assert translation.status_code == 422 and "not diarized" in translation.text
    assert job.status_code == 422 and "need diarize=true" in job.text
