"""The HTTP API of a real Serve app, as clients see it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.conftest import MAX_FILE_SIZE_MB, Service
from tests.support import speech

ENGLISH = speech.reference("en_office")
SPANISH = speech.reference("es_agua")


def _post(service: Service, path: Path, name: str | None = None, **fields: str | list[str]):  # type: ignore[no-untyped-def]
    with service.client() as client, open(path, "rb") as f:
        return client.post(
            "/v1/audio/transcriptions",
            files={"file": (name or path.name, f)},
            data=fields,
        )


def _error(response) -> str:  # type: ignore[no-untyped-def]
    message: str = response.json()["error"]["message"]
    return message


def test_health_reports_the_model_pool_to_admin_keys_only(service: Service) -> None:
    body = service.health()
    with service.client() as user, service.client(api_key=None) as anonymous:
        # Pools, backlog and broker are every tenant's load: not for every key or caller.
        assert user.get("/health").json() == anonymous.get("/health").json() == {"status": "ok"}
    assert body["status"] == "ok"
    assert body["models"] == ["tiny.en", "base"]
    assert body["pools"]["TranscriberCPU"]["replicas"].get("RUNNING", 0) >= 1


def test_models_lists_what_is_served(service: Service) -> None:
    with service.client() as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["tiny.en", "base", "whisper-1"]


def test_openapi_docs(service: Service) -> None:
    with service.client() as client:
        assert "swagger" in client.get("/docs").text.lower()
        paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/models", "/health"} <= set(
        paths
    )


@pytest.mark.parametrize("suffix", sorted(speech.ENCODINGS))
def test_english_in_every_container(service: Service, clip, suffix: str) -> None:
    response = _post(service, clip("en_office", suffix))
    assert response.status_code == 200, response.text
    assert speech.word_error_rate(ENGLISH, response.json()["text"]) < 0.2


def test_spanish_with_the_multilingual_model(service: Service, clip) -> None:
    response = _post(
        service,
        clip("es_agua", ".mp3"),
        model="base",
        language="es",
        response_format="verbose_json",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == "es"
    assert speech.word_error_rate(SPANISH, body["text"]) < 0.3
    assert {"buenos", "días", "agua", "cuerpo"} <= set(speech.words(body["text"]))


def test_spanish_language_is_detected(service: Service, clip) -> None:
    response = _post(service, clip("es_agua", ".ogg"), model="base", response_format="verbose_json")
    assert response.status_code == 200, response.text
    assert response.json()["language"] == "es"


def test_translation_to_english(service: Service, clip) -> None:
    with service.client() as client, open(clip("es_agua", ".m4a"), "rb") as f:
        response = client.post(
            "/v1/audio/translations", files={"file": ("agua.m4a", f)}, data={"model": "base"}
        )
    assert response.status_code == 200, response.text
    text = set(speech.words(response.json()["text"]))
    assert {"water", "body"} <= text, text


@pytest.fixture(scope="module")
def english_mp3(clip) -> Path:  # type: ignore[no-untyped-def]
    path: Path = clip("en_office", ".mp3")
    return path


def test_json_format(service: Service, english_mp3: Path) -> None:
    response = _post(service, english_mp3, response_format="json")
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"text", "usage"}  # no logprobs unless include[]=logprobs
    assert body["usage"]["type"] == "duration" and body["usage"]["seconds"] > 1


def test_text_format(service: Service, english_mp3: Path) -> None:
    response = _post(service, english_mp3, response_format="text")
    assert response.headers["content-type"].startswith("text/plain")
    assert speech.word_error_rate(ENGLISH, response.text) < 0.2


def _cues(text: str, marker: str) -> list[tuple[str, str]]:
    lines = text.strip().splitlines()
    cues = []
    for i, line in enumerate(lines):
        if "-->" in line:
            start, end = (part.strip() for part in line.split("-->"))
            assert len(start) == len(end) == 12 and start[8] == end[8] == marker
            cues.append((start, lines[i + 1]))
    return cues


def test_srt_format(service: Service, english_mp3: Path) -> None:
    body = _post(service, english_mp3, response_format="srt").text
    assert body.startswith("1\n00:00:00,000 --> ")
    cues = _cues(body, ",")
    assert len(cues) >= 2
    assert speech.word_error_rate(ENGLISH, " ".join(text for _, text in cues)) < 0.2


def test_vtt_format(service: Service, english_mp3: Path) -> None:
    response = _post(service, english_mp3, response_format="vtt")
    assert response.headers["content-type"].startswith("text/vtt")
    assert response.text.startswith("WEBVTT\n\n")
    assert len(_cues(response.text, ".")) >= 2


def test_verbose_json_with_words(service: Service, english_mp3: Path) -> None:
    response = _post(
        service,
        english_mp3,
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["word", "segment"]},
    )
    body = response.json()
    assert body["task"] == "transcribe" and body["language"] == "en"
    assert 12 < body["duration"] < 13.5
    for segment in body["segments"]:
        assert {"id", "start", "end", "text", "avg_logprob", "no_speech_prob"} <= set(segment)
        assert 0 <= segment["start"] <= segment["end"] <= body["duration"] + 0.5
    assert len(body["words"]) >= 25
    assert body["words"][0]["start"] < body["words"][-1]["end"]


def test_verbose_json_without_words(service: Service, english_mp3: Path) -> None:
    body = _post(service, english_mp3, response_format="verbose_json").json()
    assert "words" not in body and body["segments"]


def test_concurrent_requests_all_answered(service: Service, clip) -> None:
    paths = [clip("en_office", s) for s in (".mp3", ".opus", ".flac", ".wav", ".m4a", ".ogg")]
    with ThreadPoolExecutor(len(paths)) as pool:
        responses = list(pool.map(lambda p: _post(service, p), paths))
    for response in responses:
        assert response.status_code == 200, response.text
        assert speech.word_error_rate(ENGLISH, response.json()["text"]) < 0.2


def test_concurrent_requests_share_batches_and_keep_their_own_words(service: Service, clip) -> None:
    """Windows of concurrent requests are decoded in shared batches (and short ones packed into
    shared decoding windows): each answer must hold its own words and no one else's."""
    references = {"en_office": ENGLISH, "en_thirty": speech.reference("en_thirty")}
    requests = [(name, clip(name, s)) for name in references for s in (".mp3", ".ogg", ".flac")]
    offset = service.log.stat().st_size
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda r: _post(service, r[1]), requests))
    for (name, _), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert speech.word_error_rate(references[name], response.json()["text"]) < 0.2, name
    shared = re.compile(r"Decoded a batch of \d+ windows from ([2-9]|\d\d+) requests")

    def logged() -> bool:
        return bool(shared.search(service.log.read_bytes()[offset:].decode(errors="replace")))

    speech.wait_until(logged, 30, "a batch holding windows of two requests or more")


# --- errors -------------------------------------------------------------------------------------


def test_empty_file_is_400(service: Service, tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    response = _post(service, empty)
    assert response.status_code == 400 and "empty" in _error(response)


def test_unsupported_extension_is_415(service: Service, english_mp3: Path) -> None:
    response = _post(service, english_mp3, name="speech.txt")
    assert response.status_code == 415 and ".txt" in _error(response)


def test_undecodable_audio_is_415(service: Service, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"definitely not an mp3 " * 2000)
    response = _post(service, junk)
    assert response.status_code == 415 and "Cannot" in _error(response)


def test_truncated_audio_still_transcribes_what_is_there(
    service: Service, clip, tmp_path: Path
) -> None:
    data = clip("en_office", ".mp3").read_bytes()
    half = tmp_path / "half.mp3"
    half.write_bytes(data[: len(data) // 2])
    response = _post(service, half)
    assert response.status_code == 200
    assert "fox" in response.json()["text"].lower()


def test_file_over_the_size_limit_is_413(service: Service, tmp_path: Path) -> None:
    # Just over the file limit but within the multipart allowance: the exact size check says no.
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * int((MAX_FILE_SIZE_MB + 0.5) * 1024 * 1024))
    response = _post(service, big)
    assert response.status_code == 413 and "limit is 2.0 MB" in _error(response)


def test_body_over_the_limit_is_refused_before_it_is_read(service: Service, tmp_path: Path) -> None:
    huge = tmp_path / "huge.wav"
    huge.write_bytes(b"\0" * (20 * 1024 * 1024))
    response = _post(service, huge)
    assert response.status_code == 413


def test_chunked_body_over_the_limit_is_cut_off(service: Service) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(40):  # 40 MiB, never announced by a Content-Length
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    with service.client() as client:
        response = client.post(
            "/v1/audio/transcriptions",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert response.status_code == 413


def test_audio_over_the_duration_limit_is_413(service: Service, speech_dir: Path) -> None:
    # Fifteen minutes of low-bitrate Opus: a small file whose decoded length is over the limit.
    long_file = speech.low_bitrate_opus(speech_dir / "fifteen_minutes.opus", 900)
    assert long_file.stat().st_size < MAX_FILE_SIZE_MB * 1024 * 1024
    response = _post(service, long_file)
    assert response.status_code == 413 and "limit is 600 s" in _error(response)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"language": "xx"}, "language"),
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": "1.5"}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"timestamp_granularities[]": "syllable"}, "timestamp_granularities[]"),
    ],
)
def test_bad_parameters_are_422(
    service: Service, english_mp3: Path, fields: dict[str, str], param: str
) -> None:
    response = _post(service, english_mp3, **fields)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_unknown_model_is_422(service: Service, english_mp3: Path) -> None:
    response = _post(service, english_mp3, model="large-v3")
    assert response.status_code == 422 and "not served" in _error(response)


def test_english_only_model_refuses_spanish_with_422(service: Service, clip) -> None:
    # Checked inside the model replica: the domain error crosses Ray and keeps its meaning.
    response = _post(service, clip("es_agua", ".mp3"), language="es")
    assert response.status_code == 422 and "English-only" in _error(response)


def test_missing_file_is_422(service: Service) -> None:
    with service.client() as client:
        response = client.post("/v1/audio/transcriptions", data={"model": "whisper-1"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "file"


def test_no_temporary_files_are_left(service: Service, english_mp3: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.ogg"
    junk.write_bytes(b"\1" * (1536 * 1024))  # over Starlette's in-memory spool size
    assert _post(service, junk).status_code == 415
    assert _post(service, english_mp3).status_code == 200
    leftovers = [p for p in service.tmp_dir.rglob("*") if p.is_file()]
    assert leftovers == []


def test_errors_are_json_in_openai_shape(service: Service, tmp_path: Path) -> None:
    empty = tmp_path / "e.wav"
    empty.write_bytes(b"")
    error = json.loads(_post(service, empty).text)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "empty_audio"  # a string (or null), as in OpenAI's API
