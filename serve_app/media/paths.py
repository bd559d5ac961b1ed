"""Audio file paths that come from outside (AMQP messages, JSON jobs) are untrusted input.

A path is used only if it is absolute, resolves (symlinks followed) inside an allowed root, and
names a regular file. Nothing is opened before that; URLs and FFmpeg protocol strings never
pass, because they are not absolute paths.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from serve_app.errors import AudioNotFoundError, PathNotAllowedError


def resolve_audio_path(raw: str, allowed_roots: Iterable[Path]) -> Path:
    if not raw or "\0" in raw:
        raise PathNotAllowedError("audio_file_path is empty or contains a NUL byte")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape: no file system can name it
        raise PathNotAllowedError("audio_file_path is not valid Unicode") from None
    if not raw.startswith("/"):
        raise PathNotAllowedError(f"audio_file_path must be an absolute path: {raw!r}")
    resolved = Path(os.path.realpath(raw))
    roots = [Path(os.path.realpath(root)) for root in allowed_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise PathNotAllowedError(
            f"audio_file_path {raw!r} is outside the allowed directories "
            f"({', '.join(str(r) for r in roots)})"
        )
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise AudioNotFoundError(f"Audio file not found: {raw}") from None
    except OSError as exc:
        raise AudioNotFoundError(f"Audio file not readable: {raw} ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise PathNotAllowedError(f"audio_file_path is not a regular file: {raw}")
    return resolved
