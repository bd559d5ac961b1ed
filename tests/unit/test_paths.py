"""Untrusted audio_file_path values (real files, directories and links in a temp tree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve_app.errors import AudioNotFoundError, PathNotAllowedError
from serve_app.media.paths import resolve_audio_path


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "shared"
    outside = tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    (root / "ok.mp3").write_bytes(b"x")
    (outside / "passwd.mp3").write_bytes(b"x")
    (root / "escape.mp3").symlink_to(outside / "passwd.mp3")
    (root / "inside_link.mp3").symlink_to(root / "ok.mp3")
    (root / "dir.mp3").mkdir()
    os.mkfifo(root / "pipe.mp3")
    return root, outside


def test_file_inside_a_root(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert resolve_audio_path(str(root / "ok.mp3"), [root]) == root / "ok.mp3"
    assert resolve_audio_path(str(root / "inside_link.mp3"), [root]) == root / "ok.mp3"


@pytest.mark.parametrize(
    "raw",
    [
        "{root}/../secret/passwd.mp3",
        "{outside}/passwd.mp3",
        "{root}/escape.mp3",
        "http://example.com/a.mp3",
        "concat:{root}/ok.mp3|{outside}/passwd.mp3",
        "pipe:0",
        "file:{root}/ok.mp3",
        "ok.mp3",
        "",
        "{root}/ok.mp3\0.wav",
        "{root}/dir.mp3",
        "{root}/pipe.mp3",
    ],
)
def test_refused(tree: tuple[Path, Path], raw: str) -> None:
    root, outside = tree
    with pytest.raises(PathNotAllowedError):
        resolve_audio_path(raw.format(root=root, outside=outside), [root])


def test_missing_file_uses_the_seed_message(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(AudioNotFoundError, match=r"^Audio file not found: .*/nope\.mp3$"):
        resolve_audio_path(str(root / "nope.mp3"), [root])


def test_root_prefix_is_not_enough(tmp_path: Path) -> None:
    (tmp_path / "shared_evil").mkdir()
    (tmp_path / "shared_evil" / "a.mp3").write_bytes(b"x")
    with pytest.raises(PathNotAllowedError):
        resolve_audio_path(str(tmp_path / "shared_evil" / "a.mp3"), [tmp_path / "shared"])
