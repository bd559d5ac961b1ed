from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.errors import SettingsError
from serve_app.media.storage import StorageConfig
from serve_app.settings import load_settings
from serve_app.store.secrets import owner_id, weights_by_owner

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


def test_postgres_urls_get_the_psycopg_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@db:5432/whisper")
    assert load_settings().database == "postgresql+psycopg://postgres@db:5432/whisper"
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/d")
    assert load_settings().database == "postgresql+psycopg://u@h/d"


def test_api_keys_are_a_secret_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", " key-one, key-two ,")
    settings = load_settings()
    assert [k.get_secret_value() for k in settings.api_keys] == ["key-one", "key-two"]
    assert "key-one" not in repr(settings)


def test_spool_defaults_under_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.spool == (tmp_path / "spool").resolve()
    assert settings.spool in settings.audio_roots


def test_per_key_audio_roots_must_name_a_key_and_stay_inside_the_allowed_roots(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("API_KEYS", "key-a,key-b")
    monkeypatch.setenv("ALLOWED_AUDIO_ROOTS", str(tmp_path))
    monkeypatch.setenv("API_KEY_AUDIO_ROOTS", f'{{"key-a": ["{tmp_path / "a"}"]}}')
    [(key, roots)] = load_settings().api_key_audio_roots.items()
    assert key.get_secret_value() == "key-a" and roots == [tmp_path / "a"]
    monkeypatch.setenv("API_KEY_AUDIO_ROOTS", '{"secret-xyz": ["/tmp"]}')
    with pytest.raises(SettingsError, match="not in API_KEYS") as refused:
        load_settings()
    assert "secret-xyz" not in str(refused.value)
    monkeypatch.setenv("API_KEY_AUDIO_ROOTS", '{"key-a": ["/etc"]}')
    with pytest.raises(SettingsError, match="outside ALLOWED_AUDIO_ROOTS"):
        load_settings()


def test_key_weights_name_keys_and_are_positive_and_go_by_owner_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_KEYS", "key-a,key-b")
    monkeypatch.setenv("API_KEY_WEIGHTS", '{"key-a": 3}')
    weights = weights_by_owner(load_settings().api_key_weights, b"secret")
    assert weights == {owner_id("key-a", b"secret"): 3.0}
    for bad in ('{"secret-xyz": 2}', '{"key-a": 0}', '{"key-a": -1}'):
        monkeypatch.setenv("API_KEY_WEIGHTS", bad)
        with pytest.raises(SettingsError) as refused:
            load_settings()
        assert "secret-xyz" not in str(refused.value)


def test_a_bad_secret_setting_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY_AUDIO_ROOTS", '{"secret-xyz": 5')
    with pytest.raises(SettingsError, match=r"(?i)api_key_audio_roots") as refused:
        load_settings()
    assert "secret-xyz" not in str(refused.value)


def test_bucket_grants_are_checked_at_start_and_keys_stay_inside_the_allowed_buckets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_KEYS", "key-a")
    monkeypatch.setenv("ALLOWED_AUDIO_BUCKETS", "audio-in/calls, s3://archive")
    monkeypatch.setenv("API_KEY_AUDIO_BUCKETS", '{"key-a": ["audio-in/calls/key-a"]}')
    monkeypatch.setenv("SPOOL_BUCKET", "spool-bucket")
    settings = load_settings()
    assert [str(g) for g in settings.audio_grants] == [
        "audio-in/calls/",
        "archive/",
        "spool-bucket/spool/",  # the spool's own uploads, for the AMQP lane as its folder is
    ]
    for variable, value, problem in (
        ("API_KEY_AUDIO_BUCKETS", '{"key-a": ["audio-in/other"]}', "outside ALLOWED_AUDIO_BUCKETS"),
        ("API_KEY_AUDIO_BUCKETS", '{"secret-xyz": ["audio-in/calls"]}', "not in API_KEYS"),
        ("ALLOWED_AUDIO_BUCKETS", "audio-in/../x", "segment"),
        ("RESULTS_BUCKET", "Bad_Bucket", "RESULTS_BUCKET"),
    ):
        with monkeypatch.context() as m:
            m.setenv(variable, value)
            with pytest.raises(SettingsError, match=problem) as refused:
                load_settings()
            assert "secret-xyz" not in str(refused.value)


def test_storage_credentials_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "AKIA-visible-nowhere")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("RESULTS_BUCKET", "results")
    settings = load_settings()
    shown = repr(settings) + str(settings.model_dump())
    assert "very-secret" not in shown and "AKIA-visible-nowhere" not in shown
    config = StorageConfig.from_settings(settings)
    assert config.secret_access_key == "very-secret" and "very-secret" not in repr(config)
    monkeypatch.setenv("S3_TIMEOUT_SEC", "-1")
    with pytest.raises(SettingsError, match="S3_TIMEOUT_SEC"):
        load_settings()
