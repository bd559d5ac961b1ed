from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.errors import SettingsError
from serve_app.settings import load_settings

SEED_VARIABLES = [
    "WHISPER_MODEL",
    "WHISPER_DEVICE",
    "WHISPER_COMPUTE_TYPE",
    "MODELS_DIR",
    "MAX_FILE_SIZE_MB",
    "MAX_AUDIO_DURATION_SEC",
    "AUDIO_SAMPLE_RATE",
    "TMP_DIR",
    "RABBITMQ_URL",
    "WORKERS_COUNT",
    "WHISPER_EXTRA_MODELS",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SEED_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_seed_defaults() -> None:
    s = load_settings()
    assert s.whisper_model == "base"
    assert s.whisper_device == "cpu"
    assert s.models_dir == Path("./models")
    assert s.max_file_size_mb == 100
    assert s.max_file_size_bytes == 100 * 1024 * 1024
    assert s.max_audio_duration_sec == 3600
    assert s.audio_sample_rate == 16000
    assert s.tmp_dir == Path("/tmp/whisper")
    assert s.rabbitmq_url == "amqp://guest:guest@localhost:5672/"
    assert s.workers_count == 4
    assert s.served_models == ["base"]


def test_seed_variable_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_MODEL", "tiny.en")
    monkeypatch.setenv("WHISPER_DEVICE", "cuda")
    monkeypatch.setenv("WHISPER_COMPUTE_TYPE", "float16")
    monkeypatch.setenv("MAX_FILE_SIZE_MB", "2.5")
    monkeypatch.setenv("WHISPER_EXTRA_MODELS", "base, tiny.en ,")
    s = load_settings()
    assert (s.whisper_model, s.whisper_device, s.whisper_compute_type) == (
        "tiny.en",
        "cuda",
        "float16",
    )
    assert s.max_file_size_bytes == int(2.5 * 1024 * 1024)
    assert s.served_models == ["tiny.en", "base"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WHISPER_DEVICE", "gpu"),
        ("WHISPER_COMPUTE_TYPE", "int4"),
        ("MAX_FILE_SIZE_MB", "-1"),
        ("MAX_AUDIO_DURATION_SEC", "forever"),
        ("AUDIO_SAMPLE_RATE", "44100"),
        ("WORKERS_COUNT", "0"),
        ("WHISPER_MODEL", ""),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert f"{variable}={value!r}" in str(info.value)
