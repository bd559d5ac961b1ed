"""Uploaded audio of async jobs, kept until the job finishes.

SPOOL_DIR must be a path every node can read when replicas run on several nodes (NFS, a
shared volume): the job carries the path, not the bytes, through RabbitMQ.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import time
import uuid
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

# Files nobody claims (the process died between saving and recording the job) go after this.
ORPHAN_AGE_S = 3600


def save(source: BinaryIO, spool: Path, suffix: str) -> Path:
    """Copy an upload into the spool under a fresh name; atomic, so readers never see half."""
    spool.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    partial = spool / f".{name}.partial"
    final = spool / f"{name}{suffix.lower()}"
    source.seek(0)
    with open(partial, "wb") as out:
        shutil.copyfileobj(source, out, length=1024 * 1024)
        out.flush()
        os.fsync(out.fileno())
    partial.rename(final)
    return final


def remove(path: str | Path, spool: Path) -> None:
    """Delete a spooled file; never anything outside the spool."""
    target = Path(path).resolve()
    if target.parent == spool.resolve():
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


def sweep_orphans(spool: Path, in_use: set[str], max_age_s: float = ORPHAN_AGE_S) -> int:
    """Delete spool files no unfinished job refers to, once they are old enough."""
    if not spool.is_dir():
        return 0
    keep = {str(Path(p).resolve()) for p in in_use}
    cutoff = time.time() - max_age_s
    removed = 0
    for entry in spool.iterdir():
        try:
            info = entry.lstat()
            # Only files the spool wrote: a lost+found or a mount point is not ours.
            if not stat.S_ISREG(info.st_mode) or str(entry.resolve()) in keep:
                continue
            if info.st_mtime > cutoff:
                continue
            entry.unlink()
            removed += 1
        except FileNotFoundError:
            continue  # another replica swept it first
        except OSError:
            logger.exception("Could not sweep %s from the spool", entry)
    return removed
