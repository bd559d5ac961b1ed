"""The spool's orphan sweep on a real directory with what a real volume holds."""

from __future__ import annotations

import os
import time
from pathlib import Path

from serve_app.media import spool


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def test_sweep_survives_entries_that_are_not_files(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    (root / "lost+found").mkdir(parents=True)  # what mkfs leaves on a mounted volume
    (root / "lost+found" / "inode-123").write_bytes(b"x")
    outside = tmp_path / "keep-me.mp3"
    outside.write_bytes(b"x")
    (root / "link.mp3").symlink_to(outside)
    orphan, claimed, fresh = root / "orphan.mp3", root / "claimed.mp3", root / "fresh.mp3"
    for path in (orphan, claimed, fresh):
        path.write_bytes(b"ID3")
    for path in (root / "lost+found", orphan, claimed, root / "link.mp3"):
        _age(path, 2 * spool.ORPHAN_AGE_S)
    removed = spool.sweep_orphans(root, in_use={str(claimed)})
    assert removed == 1
    assert not orphan.exists()
    assert claimed.exists() and fresh.exists() and outside.exists()
    assert (root / "lost+found" / "inode-123").exists()
