"""Uploaded audio of async jobs, kept until the job finishes.

The job carries where its audio is, not the bytes, through RabbitMQ: so when replicas run on
several nodes, every node must reach the spool. With SPOOL_BUCKET it is an object storage
prefix (``Spool``); SPOOL_DIR is a shared path then (NFS, a shared volume), or one node's disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from serve_app.errors import PathNotAllowedError
from serve_app.media import objects
from serve_app.media.storage import ObjectStorage
from serve_app.settings import Settings

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


@dataclass(frozen=True)
class Spool:
    """Where uploads wait: ``directory``, or under ``bucket`` (a grant: bucket and prefix)
    in ``storage``. Files a job names are what ``save`` returned: a path or an s3:// name."""

    directory: Path
    bucket: objects.Grant | None = None
    storage: ObjectStorage | None = None

    @classmethod
    def from_settings(cls, settings: Settings, storage: ObjectStorage | None) -> Spool:
        place = settings.spool_place
        if place is None or storage is None:
            return cls(settings.spool)
        return cls(settings.spool, place, storage)

    def save(self, source: BinaryIO, suffix: str) -> str:
        if self.bucket is None or self.storage is None:
            return str(save(source, self.directory, suffix))
        ref = self.bucket.ref(f"{uuid.uuid4().hex}{suffix.lower()}")
        source.seek(0)
        self.storage.upload(source, ref)  # an object appears whole or not at all
        return str(ref)

    def remove(self, name: str) -> None:
        """Delete a spooled upload; never anything the spool did not write."""
        if not objects.is_object_name(name):
            remove(name, self.directory)
            return
        try:
            ref = objects.ObjectRef.parse(name)
        except PathNotAllowedError:
            return
        if self.storage is not None and self.bucket is not None and self.bucket.covers(ref):
            self.storage.delete(ref)

    def sweep_orphans(self, in_use: set[str], max_age_s: float = ORPHAN_AGE_S) -> int:
        """Delete uploads no unfinished job refers to, once they are old enough: in the
        directory (files from before a switch to a bucket too) and in the bucket."""
        removed = sweep_orphans(self.directory, in_use, max_age_s)
        if self.bucket is None or self.storage is None:
            return removed
        cutoff = datetime.now(UTC) - timedelta(seconds=max_age_s)
        for ref, written in self.storage.listed(self.bucket.bucket, self.bucket.prefix):
            if written < cutoff and str(ref) not in in_use:
                self.storage.delete(ref)
                removed += 1
        return removed
