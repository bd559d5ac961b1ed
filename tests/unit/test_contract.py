"""Parsing and building the Whisper-Local messages (pure logic)."""

from __future__ import annotations

import json

import pytest

from ingest import contract as c
from serve_app.schemas import Segment, Transcript


def _parse(body: object) -> c.ParsedMessage:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return c.parse_request(raw)


def test_seed_request_parses() -> None:
    parsed = _parse(
        {
            "attachment_id": 123,
            "audio_file_path": "/tmp/shared_audio/grabacion.mp3",
            "language": "es",
            "import_batch_id": 7,
        }
    )
    assert parsed.request.attachment_id == 123
    assert parsed.request.language == "es" and parsed.request.import_batch_id == 7
    assert parsed.request.retry_count == 0


def test_optional_fields_may_be_missing_or_null() -> None:
    request = _parse(
        {"attachment_id": 1, "audio_file_path": "/a.mp3", "import_batch_id": None}
    ).request
    assert request.language is None and request.import_batch_id is None


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe\x00garbage",
        b"not json",
        b"[1, 2]",
        b'"text"',
        json.dumps({"audio_file_path": "/a.mp3"}).encode(),
        json.dumps({"attachment_id": "123", "audio_file_path": "/a.mp3"}).encode(),
        json.dumps({"attachment_id": True, "audio_file_path": "/a.mp3"}).encode(),
        json.dumps({"attachment_id": 1.5, "audio_file_path": "/a.mp3"}).encode(),
    ],
)
def test_messages_without_a_usable_attachment_id_are_unanswerable(raw: bytes) -> None:
    with pytest.raises(c.UnanswerableMessage):
        c.parse_request(raw)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"attachment_id": 5, "import_batch_id": 9}, "audio_file_path"),
        ({"attachment_id": 5, "audio_file_path": 42, "import_batch_id": 9}, "audio_file_path"),
        ({"attachment_id": 5, "audio_file_path": "/a.mp3", "language": 3}, "language"),
        (
            {"attachment_id": 5, "audio_file_path": "/a.mp3", "import_batch_id": "x"},
            "import_batch_id",
        ),
    ],
)
def test_malformed_requests_are_answerable(body: dict[str, object], field: str) -> None:
    with pytest.raises(c.MalformedRequest) as info:
        _parse(body)
    assert info.value.attachment_id == 5
    assert field in info.value.message
    expected_batch = body.get("import_batch_id") if field != "import_batch_id" else None
    assert info.value.import_batch_id == expected_batch


@pytest.mark.parametrize("attachment_id", [2**63, -(2**63) - 1, 10**64 + 7])
def test_an_attachment_id_past_64_bits_is_answered_at_once(attachment_id: int) -> None:
    """The ledger could never record it as answered: refused before anything is stored."""
    with pytest.raises(c.MalformedRequest) as info:
        _parse({"attachment_id": attachment_id, "audio_file_path": "/a.mp3", "import_batch_id": 3})
    assert info.value.attachment_id == attachment_id and "64-bit" in info.value.message
    assert info.value.import_batch_id == 3
    for edge in (2**63 - 1, -(2**63)):
        assert _parse({"attachment_id": edge, "audio_file_path": "/a.mp3"}).request


def test_retry_count_body_wins_header_fallback() -> None:
    body = _parse({"attachment_id": 1, "audio_file_path": "/a.mp3", "retry_count": 2}).request
    assert c.retry_count(body, {c.RETRY_HEADER: 1}) == 2
    plain = _parse({"attachment_id": 1, "audio_file_path": "/a.mp3"}).request
    assert c.retry_count(plain, {c.RETRY_HEADER: 1}) == 1
    assert c.retry_count(plain, {}) == 0


def test_job_key_ignores_retry_count() -> None:
    a = _parse({"attachment_id": 1, "audio_file_path": "/a.mp3", "language": ""}).request
    b = _parse({"attachment_id": 1, "audio_file_path": "/a.mp3", "retry_count": 2}).request
    other = _parse({"attachment_id": 2, "audio_file_path": "/a.mp3"}).request
    assert c.job_key(a) == c.job_key(b) != c.job_key(other)


def test_retry_republish_drops_death_headers_and_keeps_fields() -> None:
    body = {"attachment_id": 1, "audio_file_path": "/a.mp3", "custom": "kept"}
    assert json.loads(c.retry_body(body, 2)) == {**body, "retry_count": 2}
    headers = c.retry_headers(
        {"x-death": [{"count": 1}], "x-first-death-reason": "expired", "trace": "abc"}, 2
    )
    assert headers == {"trace": "abc", "x-retry-count": 2}


def test_error_result_has_the_seed_fields_and_error_message() -> None:
    result = json.loads(c.error_result(123, None, "base", "Audio file not found: /x").to_json())
    assert result == {
        "attachment_id": 123,
        "texto": "",
        "duration": 0,
        "model": "base",
        "success": False,
        "import_batch_id": None,
        "error_message": "Audio file not found: /x",
    }


def test_success_result_adds_language_and_segments_only() -> None:
    request = _parse(
        {"attachment_id": 9, "audio_file_path": "/a.mp3", "import_batch_id": 7}
    ).request
    segment = Segment(
        id=0,
        seek=0,
        start=0.0,
        end=1.2,
        text=" Hola.",
        tokens=[],
        temperature=0,
        avg_logprob=-0.1,
        compression_ratio=1,
        no_speech_prob=0.01,
    )
    transcript = Transcript(
        text="Hola.",
        language="es",
        language_probability=0.9,
        duration=1.23456,
        segments=[segment],
        model="base",
    )
    result = json.loads(c.success_result(request, transcript, attempts=2).to_json())
    assert result == {
        "attachment_id": 9,
        "texto": "Hola.",
        "duration": 1.235,
        "model": "base",
        "success": True,
        "import_batch_id": 7,
        "language": "es",
        "segments": [{"id": 0, "start": 0.0, "end": 1.2, "text": "Hola."}],
        "attempts": 2,
    }


def test_a_success_result_names_the_objects_written_back_only_when_there_are_some() -> None:
    request = _parse({"attachment_id": 9, "audio_file_path": "s3://audio-in/a.mp3"}).request
    transcript = Transcript(
        text="Hola.", language="es", language_probability=1, duration=1, segments=[], model="base"
    )
    objects = {"transcript": "s3://out/r/x/transcript.txt", "json": "s3://out/r/x/result.json"}
    written = json.loads(c.success_result(request, transcript, 1, objects).to_json())
    plain = json.loads(c.success_result(request, transcript, 1).to_json())
    assert written["result_objects"] == objects and "result_objects" not in plain
    assert {k: v for k, v in written.items() if k != "result_objects"} == plain
