"""What the routes say about diarization before any audio is decoded, in-process: the real
FastAPI app over a stand-in backend installed without the `diarize` extra."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from pydub import AudioSegment

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


def _clip_url(source: Path, tmp_path: Path, seconds: float, silent: bool = False) -> str:
    spoken = AudioSegment.from_file(source)[: int(seconds * 1000)]
    if silent:
        spoken = AudioSegment.silent(duration=int(seconds * 1000), frame_rate=16000)
    out = tmp_path / f"clip_{seconds}_{silent}.wav"
    spoken.export(out, format="wav")
    return "data:audio/wav;base64," + base64.b64encode(out.read_bytes()).decode()


async def test_known_speakers_are_checked_before_the_file_is_decoded(
    backend: StandIn, clip, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    backend.diarization = True
    backend.release.set()
    source = clip("en_office", ".wav")
    data = clip("en_office", ".mp3").read_bytes()
    good = _clip_url(source, tmp_path, 3)
    names, refs = "known_speaker_names[]", "known_speaker_references[]"
    diarized = {"response_format": "diarized_json"}
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({names: "Ann", refs: good}, "set diarize=true", "known_speaker_names"),
        ({**diarized, names: ["Ann", "Bo"], refs: good}, "2 known_speaker_names for 1", ""),
        ({**diarized, names: list("pqrst"), refs: [good] * 5}, "At most 4", ""),
        ({**diarized, names: "B", refs: good}, "choose another", "known_speaker_names"),
        ({**diarized, names: ["Ann", "Ann"], refs: [good] * 2}, "must differ", ""),
        ({**diarized, names: "A\x07nn", refs: good}, "control characters", "known_speaker_names"),
        ({**diarized, names: "Ann", refs: "hello"}, "base64 data URL", ""),
        ({**diarized, names: "Ann", refs: "data:text/plain;base64,aGk="}, "not audio", ""),
        ({**diarized, names: "Ann", refs: "data:audio/wav;base64,%%"}, "not valid base64", ""),
        ({**diarized, names: "Ann", refs: _clip_url(source, tmp_path, 1)}, "1.0 s long", ""),
        ({**diarized, names: "Ann", refs: _clip_url(source, tmp_path, 12)}, "[0]: ", ""),
        (
            {**diarized, names: "Ann", refs: _clip_url(source, tmp_path, 3, silent=True)},
            "holds no speech",
            "known_speaker_references",
        ),
    ]
    async with client(backend) as c:
        for fields, message, param in cases:
            answer = await c.post(
                "/v1/audio/transcriptions", files={"file": ("a.mp3", data)}, data=fields
            )
            assert answer.status_code == 422 and message in answer.text, (message, answer.text)
            assert answer.json()["error"]["param"].startswith(param or "known_speaker")
        assert backend.asked == []
        named = await c.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.mp3", data)},
            data={**diarized, names: [" Ann  Lee", "Bo"], refs: [good, good]},
        )
    assert named.status_code == 200, named.text
    (options,) = backend.asked
    assert [(s.name, len(s.voice)) for s in options.known_speakers or []] == [
        ("Ann Lee", 2),
        ("Bo", 2),
    ]
