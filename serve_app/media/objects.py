"""Object names that come from outside (``s3://bucket/key`` in AMQP requests and JSON jobs) are
untrusted input, as paths are (``serve_app.media.paths``).

An object is used only if its name is well formed (a valid bucket name; a key of at most 1024
bytes with no control characters, no leading ``/``, no empty, ``.`` or ``..`` segment, no
backslash) and it lies in a granted bucket, under the grant's prefix taken as a folder:
``bucket/audio`` grants ``audio/x.mp3``, never ``audio-private/x.mp3``. Nothing is fetched
before that. No storage client here: this is the pure part, which settings also use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from serve_app.errors import PathNotAllowedError

SCHEME = "s3://"
MAX_KEY_BYTES = 1024  # S3's own limit
# S3's rules for new buckets (which MinIO and Ceph follow): 3-63 of a-z, 0-9, '.', '-'.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_object_name(raw: str) -> bool:
    """Whether a source names an object rather than a file (the scheme is lower case)."""
    return raw.startswith(SCHEME)


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        """The key's last segment (a file name for the job's view)."""
        return self.key.rsplit("/", 1)[-1]

    @classmethod
    def parse(cls, raw: str) -> ObjectRef:
        """``s3://bucket/key``, well formed, or PathNotAllowedError saying what is wrong."""
        if not is_object_name(raw):
            raise PathNotAllowedError(f"Not an object name (s3://bucket/key): {raw[:200]!r}")
        bucket, _, key = raw.removeprefix(SCHEME).partition("/")
        check_bucket(bucket)
        check_key(key)
        return cls(bucket, key)


def check_bucket(bucket: str) -> None:
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise PathNotAllowedError(f"Not a valid bucket name: {bucket[:100]!r}")


def check_key(key: str, prefix: bool = False) -> None:
    """An object key (or with ``prefix``, a folder of keys: it may be empty)."""
    what = "prefix" if prefix else "key"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate escape: no store can name it
        raise PathNotAllowedError(f"The object {what} is not valid Unicode") from None
    if not key and not prefix:
        raise PathNotAllowedError("The object key is empty")
    if size > MAX_KEY_BYTES:
        raise PathNotAllowedError(
            f"The object {what} is {size} bytes long; the limit is {MAX_KEY_BYTES}"
        )
    if _CONTROL.search(key):
        raise PathNotAllowedError(f"The object {what} contains control characters")
    if "\\" in key:
        raise PathNotAllowedError(f"The object {what} contains a backslash")
    if key.startswith("/"):
        raise PathNotAllowedError(f"The object {what} must not start with '/'")
    segments = key.removesuffix("/").split("/") if key else []
    if any(segment in ("", ".", "..") for segment in segments):
        raise PathNotAllowedError(f"The object {what} has an empty, '.' or '..' segment")


@dataclass(frozen=True)
class Grant:
    """A bucket, or a folder of one, that sources may be read from."""

    bucket: str
    prefix: str = ""  # "" or ending in "/"

    def __str__(self) -> str:
        return f"{self.bucket}/{self.prefix}"

    @classmethod
    def parse(cls, text: str) -> Grant:
        """``bucket``, ``bucket/folder`` or the same with ``s3://`` before it."""
        bucket, _, prefix = text.strip().removeprefix(SCHEME).partition("/")
        check_bucket(bucket)
        check_key(prefix, prefix=True)
        return cls(bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/")

    @classmethod
    def place(cls, bucket: str | None, prefix: str) -> Grant | None:
        """Where the service writes (a bucket setting and its prefix); None without a bucket."""
        return None if bucket is None else cls.parse(f"{bucket}/{prefix}")

    def covers(self, ref: ObjectRef) -> bool:
        return ref.bucket == self.bucket and ref.key.startswith(self.prefix)

    def within(self, other: Grant) -> bool:
        return self.bucket == other.bucket and self.prefix.startswith(other.prefix)

    def ref(self, name: str) -> ObjectRef:
        """The object ``name`` under this grant's prefix."""
        return ObjectRef(self.bucket, self.prefix + name)


def resolve_object(raw: str, grants: Iterable[Grant]) -> ObjectRef:
    """A source from outside, well formed and inside one of ``grants``."""
    ref = ObjectRef.parse(raw)
    check_granted(ref, grants)
    return ref


def check_granted(ref: ObjectRef, grants: Iterable[Grant]) -> None:
    """PathNotAllowedError unless ``ref`` lies inside one of ``grants``."""
    granted = list(grants)
    if not granted:
        raise PathNotAllowedError(
            "s3:// sources are not enabled here (the operator sets ALLOWED_AUDIO_BUCKETS)"
        )
    if not any(grant.covers(ref) for grant in granted):
        raise PathNotAllowedError(
            f"{ref} is outside the allowed buckets ({', '.join(str(g) for g in granted)})"
        )
