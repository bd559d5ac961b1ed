"""The official openai client, unchanged, against the service."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.integration.conftest import API_KEY, Service
from tests.support import speech


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0)


def test_transcription_json(client: openai.OpenAI, clip) -> None:
    with open(clip("en_office", ".mp3"), "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert speech.word_error_rate(speech.reference("en_office"), result.text) < 0.2
    assert result.usage is not None and result.usage.type == "duration"
    assert result.usage.seconds > 3.0


def test_transcription_text_and_srt(client: openai.OpenAI, clip) -> None:
    path: Path = clip("en_office", ".opus")
    with open(path, "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert isinstance(text, str) and "fox" in text.lower()
    with open(path, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert isinstance(srt, str) and " --> " in srt


def test_transcription_verbose_with_words(client: openai.OpenAI, clip) -> None:
    with open(clip("es_agua", ".flac"), "rb") as f:
        result = client.audio.transcriptions.create(
            model="base",
            file=f,
            language="es",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.language == "es"
    assert result.segments and result.words
    assert result.usage is not None and result.usage.seconds == pytest.approx(
        result.duration, abs=1e-3
    )
    assert speech.word_error_rate(speech.reference("es_agua"), result.text) < 0.3


def test_translation(client: openai.OpenAI, clip) -> None:
    with open(clip("es_agua", ".mp3"), "rb") as f:
        result = client.audio.translations.create(model="base", file=f)
    assert "water" in result.text.lower()


def test_models(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {"tiny.en", "base", "whisper-1"}


def test_errors_surface_as_api_errors(client: openai.OpenAI, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio" * 100)
    with open(bad, "rb") as f, pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert info.value.status_code == 415
    assert "Cannot" in info.value.message
    with open(bad, "rb") as f, pytest.raises(openai.UnprocessableEntityError):
        client.audio.transcriptions.create(model="no-such-model", file=f)


def test_streaming_transcription_deltas(client: openai.OpenAI, clip) -> None:
    with open(clip("en_thirty", ".mp3"), "rb") as f:
        stream = client.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(deltas) >= 2, "a 30 s clip is decoded in several segments, streamed one by one"
    assert len(done) == 1 and events[-1] is done[0]
    assert "".join(deltas).strip() == done[0].text
    assert done[0].usage is not None and done[0].usage.model_dump()["seconds"] > 25
    assert speech.word_error_rate(speech.reference("en_thirty"), done[0].text) < 0.25


def test_a_wrong_key_is_refused(service: Service) -> None:
    wrong = openai.OpenAI(base_url=f"{service.url}/v1", api_key="guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


RARE_TERMS = ["Zyntrovia", "Vexlar", "Quetiapine"]


def _terms_in(text: str) -> int:
    return sum(term.lower() in text.lower() for term in RARE_TERMS)


def test_keywords_bias_the_decoder_toward_rare_terms(client: openai.OpenAI, clip) -> None:
    path: Path = clip("en_rare_terms", ".mp3")
    with open(path, "rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f)
    with open(path, "rb") as f:
        boosted = client.audio.transcriptions.create(model="whisper-1", file=f, keywords=RARE_TERMS)
    with open(path, "rb") as f:
        stream = client.audio.transcriptions.create(
            model="whisper-1", file=f, keywords=RARE_TERMS, stream=True
        )
        streamed = next(e.text for e in stream if e.type == "transcript.text.done")
    assert _terms_in(plain.text) <= 1, plain.text
    assert _terms_in(boosted.text) >= 2, boosted.text
    assert _terms_in(streamed) >= 2, streamed
    with open(path, "rb") as f, pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=f, keywords=["x" * 65])
    assert info.value.param == "keywords"


def test_languages_limit_detection(client: openai.OpenAI, clip) -> None:
    path: Path = clip("es_agua", ".mp3")
    found = {}
    for allowed in (["en", "es"], ["pt", "it"]):
        with open(path, "rb") as f:
            found[allowed[0]] = client.audio.transcriptions.create(
                model="base", file=f, languages=allowed, response_format="verbose_json"
            ).language
    assert found == {"en": "es", "pt": found["pt"]} and found["pt"] in {"pt", "it"}
    with open(path, "rb") as f, pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.transcriptions.create(
            model="base", file=f, language="es", extra_body={"languages": ["es"]}
        )
    assert info.value.param == "languages"


def test_chunking_strategy_reaches_the_vad(client: openai.OpenAI, clip) -> None:
    path: Path = clip("en_office", ".mp3")
    reference = speech.reference("en_office")
    tuned = {"type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 300}
    with open(path, "rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, chunking_strategy=tuned
        )
    assert speech.word_error_rate(reference, result.text) < 0.2
    # At a threshold of 1 no frame counts as speech: nothing is decoded.
    deaf = {"type": "server_vad", "threshold": 1.0}
    with open(path, "rb") as f:
        nothing = client.audio.transcriptions.create(
            model="whisper-1", file=f, chunking_strategy=deaf
        )
    with open(path, "rb") as f:
        auto = client.audio.transcriptions.create(
            model="whisper-1", file=f, chunking_strategy="auto"
        )
    assert nothing.text == "" and speech.word_error_rate(reference, auto.text) < 0.2
    with open(path, "rb") as f, pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.transcriptions.create(
            model="whisper-1", file=f, chunking_strategy={"type": "server_vad", "threshold": 2}
        )
    assert info.value.param == "chunking_strategy"


def test_logprobs_in_json_and_in_stream_events(client: openai.OpenAI, clip) -> None:
    path: Path = clip("en_office", ".mp3")
    with open(path, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, include=["logprobs"])
    assert result.logprobs and len(result.logprobs) >= 30
    assert "".join(t.token or "" for t in result.logprobs).strip() == result.text
    assert all(t.logprob is not None and t.logprob <= 0 for t in result.logprobs)
    assert (
        bytes(int(b) for b in result.logprobs[0].bytes or []).decode() == result.logprobs[0].token
    )
    with open(path, "rb") as f:
        events = list(
            client.audio.transcriptions.create(
                model="whisper-1", file=f, include=["logprobs"], stream=True
            )
        )
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    done = events[-1]
    assert done.type == "transcript.text.done" and done.logprobs
    assert all(e.logprobs for e in deltas)
    streamed = [t.token for e in deltas for t in e.logprobs or []]
    assert "".join(streamed).strip() == done.text
    assert [t.token for t in done.logprobs] == streamed
    with open(path, "rb") as f, pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.transcriptions.create(
            model="whisper-1", file=f, include=["logprobs"], response_format="srt"
        )
    assert info.value.param == "include"
