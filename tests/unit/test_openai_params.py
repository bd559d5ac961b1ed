"""OpenAI's 2026 transcription parameters (keywords, languages, chunking_strategy): their checks
as plain logic, then as the routes read them, in-process over a stand-in backend."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.datastructures import FormData

from serve_app.api.params import form_values
from serve_app.errors import InvalidOptionError
from serve_app.model.chunking import ChunkingOptions, vad_parameters
from serve_app.model.languages import checked_language, most_likely
from serve_app.model_options import check_keywords, check_languages, chunking_strategy
from serve_app.schemas import MAX_KEYWORDS, ServerVad, TranscribeOptions
from tests.support.api_standin import StandIn, client


def test_keywords_are_tidied_and_bounded() -> None:
    assert check_keywords(None) is None and check_keywords(["", "  "]) is None
    assert check_keywords([" Zyntrovia ", "Dr.  Okonkwo", "Zyntrovia"]) == [
        "Zyntrovia",
        "Dr. Okonkwo",
    ]
    for bad, message in [
        (["x" * 65], "longer than 64"),
        ([f"term{i}" for i in range(MAX_KEYWORDS + 1)], f"At most {MAX_KEYWORDS}"),
        (["a\x00b"], "control characters"),
        ([3], "must be strings"),
    ]:
        with pytest.raises(InvalidOptionError, match=message) as info:
            check_keywords(bad)  # type: ignore[arg-type]
        assert info.value.param == "keywords"


def test_languages_are_codes_and_exclude_language() -> None:
    assert check_languages(["es", "EN-us", "es"], None) == ["es", "en"]
    assert check_languages([], None) is None
    for values, language, message in [
        (["es", "xx"], None, "Unknown language code 'xx'"),
        (["es"], "en", "either language or languages"),
    ]:
        with pytest.raises(InvalidOptionError, match=message) as info:
            check_languages(values, language)
        assert info.value.param == "languages"


def test_chunking_strategy_values() -> None:
    assert chunking_strategy(None) is None and chunking_strategy("auto") is None
    assert chunking_strategy('"auto"') is None
    as_fields = chunking_strategy({"type": "server_vad", "threshold": "0.7"})
    assert as_fields == ServerVad(threshold=0.7)
    as_json = chunking_strategy('{"type": "server_vad", "silence_duration_ms": 800}')
    assert as_json == ServerVad(silence_duration_ms=800)
    for bad, message in [
        ("sometimes", '"auto" or a server_vad object'),
        ({"type": "semantic_vad"}, 'of type "server_vad"'),
        ({"type": "server_vad", "threshold": 1.5}, "threshold"),
        ({"type": "server_vad", "prefix_padding_ms": -1}, "prefix_padding_ms"),
        ({"type": "server_vad", "eagerness": "high"}, "eagerness"),
        ("[1, 2]", "server_vad"),
    ]:
        with pytest.raises(InvalidOptionError, match=message) as info:
            chunking_strategy(bad)
        assert info.value.param == "chunking_strategy"


def test_server_vad_overrides_only_what_it_sets() -> None:
    service = ChunkingOptions(vad_min_silence_ms=250, vad_speech_pad_ms=400)
    assert service.with_vad(None) is service
    mine = service.with_vad(ServerVad(threshold=0.8, silence_duration_ms=900))
    assert (mine.vad_threshold, mine.vad_min_silence_ms, mine.vad_speech_pad_ms) == (0.8, 900, 400)


def test_a_call_decoded_whole_gets_the_requests_vad() -> None:
    service = {"min_silence_duration_ms": 500}
    assert vad_parameters(service, None) is service
    assert vad_parameters(service, ServerVad(threshold=0.3, prefix_padding_ms=100)) == {
        "min_silence_duration_ms": 500,
        "threshold": 0.3,
        "speech_pad_ms": 100,
    }


def test_detection_among_allowed_languages() -> None:
    ranked = [("es", 0.7), ("pt", 0.2), ("it", 0.06), ("en", 0.04)]
    assert most_likely(ranked, ["es", "en"]) == ("es", pytest.approx(0.7 / 0.74))
    assert most_likely(ranked, ["en", "it"]) == ("it", pytest.approx(0.6))
    assert most_likely(ranked, ["fr", "de"]) == ("fr", 0.0)


def test_an_english_only_model_needs_en_among_the_languages() -> None:
    english = TranscribeOptions(languages=["es", "en"])
    assert checked_language("tiny.en", False, english) is None
    with pytest.raises(InvalidOptionError, match="must include 'en'") as info:
        checked_language("tiny.en", False, TranscribeOptions(languages=["es", "pt"]))
    assert info.value.param == "languages"
    assert checked_language("base", True, TranscribeOptions(languages=["es", "pt"])) is None


def test_form_values_read_both_encodings() -> None:
    sdk = FormData(
        [
            ("keywords[]", "Zyntrovia"),
            ("keywords[]", "Vexlar"),
            ("languages[]", "es"),
            ("chunking_strategy[type]", "server_vad"),
            ("chunking_strategy[threshold]", "0.6"),
            ("model", "whisper-1"),
        ]
    )
    assert form_values(sdk) == {
        "keywords": ["Zyntrovia", "Vexlar"],
        "languages": ["es"],
        "chunking_strategy": {"type": "server_vad", "threshold": "0.6"},
    }
    plain = FormData([("keywords", "Nimbora"), ("chunking_strategy", "auto")])
    assert form_values(plain) == {"keywords": ["Nimbora"], "chunking_strategy": "auto"}
    both = FormData([("chunking_strategy", "auto"), ("chunking_strategy[type]", "server_vad")])
    with pytest.raises(InvalidOptionError, match="once"):
        form_values(both)


async def test_the_sync_route_passes_them_to_the_model(backend: StandIn, clip) -> None:  # type: ignore[no-untyped-def]
    backend.release.set()
    data = clip("en_office", ".mp3").read_bytes()
    fields = {
        "keywords[]": ["Zyntrovia", " Vexlar "],
        "languages[]": ["en", "es"],
        "chunking_strategy[type]": "server_vad",
        "chunking_strategy[silence_duration_ms]": "700",
        "include[]": "logprobs",
    }
    async with client(backend) as c:
        answer = await c.post(
            "/v1/audio/transcriptions", files={"file": ("a.mp3", data)}, data=fields
        )
    assert answer.status_code == 200, answer.text
    (options,) = backend.asked
    assert options.keywords == ["Zyntrovia", "Vexlar"] and options.languages == ["en", "es"]
    assert options.vad == ServerVad(silence_duration_ms=700)
    assert options.hotwords == "Zyntrovia, Vexlar" and options.logprobs
    assert answer.json()["logprobs"] == []  # the stand-in's transcript has no words


async def test_bad_values_are_422_naming_the_parameter(backend: StandIn, clip) -> None:  # type: ignore[no-untyped-def]
    data = clip("en_office", ".mp3").read_bytes()
    cases: list[tuple[dict[str, str], str]] = [
        ({"keywords[]": "k" * 100}, "keywords"),
        ({"languages[]": "klingon"}, "languages"),
        ({"language": "en", "languages[]": "es"}, "languages"),
        ({"chunking_strategy": "sometimes"}, "chunking_strategy"),
        ({"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "2"}, ""),
        ({"include[]": "segments"}, "include"),
        ({"include[]": "logprobs", "response_format": "srt"}, "include"),
    ]
    async with client(backend) as c:
        for fields, param in cases:
            answer = await c.post(
                "/v1/audio/transcriptions", files={"file": ("a.mp3", data)}, data=fields
            )
            assert answer.status_code == 422, (fields, answer.text)
            assert answer.json()["error"]["param"] == (param or "chunking_strategy"), fields
    assert backend.asked == []


async def test_jobs_keep_them(backend: StandIn, clip) -> None:  # type: ignore[no-untyped-def]
    data = clip("en_office", ".mp3").read_bytes()
    path = str(backend.settings.allowed_audio_roots[0] / "a.mp3")
    async with client(backend) as c:
        multipart = await c.post(
            "/v1/jobs",
            files={"file": ("a.mp3", data)},
            data={"keywords[]": "Nimbora", "chunking_strategy": "auto", "include[]": "logprobs"},
        )
        as_json = await c.post(
            "/v1/jobs",
            json={
                "audio_file_path": path,
                "languages": ["pt", "es"],
                "chunking_strategy": {"type": "server_vad", "threshold": 0.3},
            },
        )
        refused = await c.post(
            "/v1/jobs", json={"audio_file_path": path, "keywords": ["ok", "x" * 65]}
        )
    assert multipart.status_code == 202 and as_json.status_code == 202, as_json.text
    first = await asyncio.to_thread(backend.store.get, multipart.json()["id"])
    second = await asyncio.to_thread(backend.store.get, as_json.json()["id"])
    assert first.options.keywords == ["Nimbora"] and first.options.vad is None
    assert first.options.logprobs and not second.options.logprobs
    assert second.options.languages == ["pt", "es"]
    assert second.options.vad == ServerVad(threshold=0.3)
    assert refused.status_code == 422 and json.loads(refused.text)["error"]["param"] == "keywords"
