"""The core with a real model (tiny.en, offline) on real synthesized speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app.errors import InvalidOptionError, ModelNotServedError
from serve_app.media import audio
from serve_app.model.transcriber import Transcriber
from serve_app.model.weights import resolve_model_path
from serve_app.model.whisper_model import SubBatchedWhisperModel
from serve_app.model_options import normalize_language, served_model, temperature_schedule
from serve_app.schemas import TranscribeOptions
from serve_app.settings import Settings
from tests.support import speech

LIMITS = audio.AudioLimits(max_bytes=10 << 20, max_duration_s=120)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(whisper_model="tiny.en", models_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def tiny(settings: Settings) -> Transcriber:
    return Transcriber.load("tiny.en", settings)


def _decode(path: Path) -> audio.AudioArray:
    with open(path, "rb") as f:
        return audio.decode(f, LIMITS).samples


def test_transcribes_english_words(tiny: Transcriber, clip) -> None:
    result = tiny.transcribe(_decode(clip("en_office", ".mp3")), TranscribeOptions())
    assert speech.word_error_rate(speech.reference("en_office"), result.text) < 0.2
    assert result.language == "en" and result.model == "tiny.en"
    assert 12 < result.duration < 13.5
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= result.duration + 0.5
    assert all(s.words is None for s in result.segments)


def test_word_timestamps(tiny: Transcriber, clip) -> None:
    result = tiny.transcribe(
        _decode(clip("en_office", ".ogg")), TranscribeOptions(word_timestamps=True)
    )
    words = result.words
    assert len(words) >= 25
    assert all(w.start <= w.end for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    # The words are the transcript's words; the recognition itself varies with espeak-ng's
    # version, so it is held to a word error rate rather than to one word.
    spoken = "".join(w.word for w in words)
    assert speech.word_error_rate(result.text, spoken) == 0
    assert speech.word_error_rate(speech.reference("en_office"), spoken) < 0.3


def test_english_only_model_refuses_other_languages_and_translation(tiny: Transcriber) -> None:
    assert not tiny.multilingual
    with pytest.raises(InvalidOptionError, match="English-only"):
        tiny.check_options(TranscribeOptions(language="es"))
    with pytest.raises(InvalidOptionError, match="cannot translate"):
        tiny.check_options(TranscribeOptions(task="translate"))
    assert tiny.check_options(TranscribeOptions(language="en-US")) == "en"


def test_language_normalization() -> None:
    assert normalize_language(None) is None
    assert normalize_language("  ") is None
    assert normalize_language("ES") == "es"
    assert normalize_language("pt_BR") == "pt"
    with pytest.raises(InvalidOptionError):
        normalize_language("klingon")


def test_temperature_schedule_follows_openai() -> None:
    assert temperature_schedule(0.0) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert temperature_schedule(0.5) == (0.5, 0.7, 0.9)
    assert temperature_schedule(1.0) == (1.0,)


def test_served_model_mapping(settings: Settings) -> None:
    multi = settings.model_copy(update={"whisper_extra_models": ["base"]})
    assert served_model(None, multi) == "tiny.en"
    assert served_model("whisper-1", multi) == "tiny.en"
    assert served_model("base", multi) == "base"
    with pytest.raises(ModelNotServedError, match=r"available: tiny\.en, base, whisper-1"):
        served_model("large-v3", multi)


def test_a_batch_encoded_window_by_window_matches_the_batch_encoded_at_once(
    settings: Settings, clip
) -> None:  # type: ignore[no-untyped-def]
    model = SubBatchedWhisperModel(
        resolve_model_path("tiny.en", settings.models_dir), device="cpu", compute_type="int8"
    )
    assert model.encode_batch_size == 1  # the default on a CPU
    windows = [_decode(clip(name, ".mp3")) for name in ("en_office", "en_thirty", "en_office")]
    window = 30 * settings.audio_sample_rate
    padded = [np.pad(w[:window], (0, window - len(w[:window]))) for w in windows]
    features = np.stack([model.feature_extractor(w)[:, :3000] for w in padded])
    by_window = np.array(model.encode(features))
    model.encode_batch_size = 0
    at_once = np.array(model.encode(features))
    assert by_window.shape == at_once.shape == (3, 1500, 384)
    np.testing.assert_allclose(by_window, at_once, atol=1e-3)
