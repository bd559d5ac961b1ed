"""Object storage through boto3: S3, or MinIO, Ceph and other S3-compatible servers.

Calls block (run them in a thread); boto3's client is safe to share between threads. Failures
come out as domain errors: an object that is missing and one the credentials may not read get
the same ``AudioNotFoundError`` (a caller learns nothing of what it may not see); a storage
that does not answer, times out or fails on its side gives ``StorageUnavailableError``, which
jobs wait out instead of failing. Credentials never reach a message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from serve_app.errors import (
    AudioNotFoundError,
    AudioTooLargeError,
    EmptyAudioError,
    StorageUnavailableError,
)
from serve_app.media.objects import ObjectRef
from serve_app.settings import Settings

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
# What a missing object, bucket or permission is called by S3, MinIO and moto alike.
_NOT_THERE = {"404", "403", "NoSuchKey", "NoSuchBucket", "NotFound", "AccessDenied", "Forbidden"}


@dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    timeout_s: float = 10

    @classmethod
    def from_settings(cls, settings: Settings) -> StorageConfig:
        key, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        return cls(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=key.get_secret_value() if key else None,
            secret_access_key=secret.get_secret_value() if secret else None,
            timeout_s=settings.s3_timeout_sec,
        )

    def __repr__(self) -> str:  # never the secret, in a traceback or a log line
        return f"StorageConfig(endpoint_url={self.endpoint_url!r}, region={self.region!r})"


class ObjectStorage:
    """One replica's client of the storage."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=Config(
                connect_timeout=config.timeout_s,
                read_timeout=config.timeout_s,
                # A brief blip is retried here; an outage is the caller's to wait out.
                retries={"max_attempts": 2, "mode": "standard"},
                # MinIO and most self-hosted servers have no per-bucket host names.
                s3={"addressing_style": "path" if config.endpoint_url else "auto"},
            ),
        )

    def size(self, ref: ObjectRef) -> int:
        """The object's size in bytes, read without its body."""
        try:
            head = self._client.head_object(Bucket=ref.bucket, Key=ref.key)
        except (ClientError, BotoCoreError) as exc:
            raise _translated(exc, ref, "read") from None
        return int(head["ContentLength"])

    def stream(self, ref: ObjectRef, write: Callable[[bytes], object], max_bytes: int) -> int:
        """The object's bytes into ``write`` as they arrive; at most ``max_bytes`` are fetched
        (``AudioTooLargeError`` past them). Returns how many were written."""
        try:
            # One byte past the limit is asked for, to tell "at the limit" from "over it".
            answer = self._client.get_object(
                Bucket=ref.bucket, Key=ref.key, Range=f"bytes=0-{max_bytes}"
            )
            body = answer["Body"]
            written = 0
            try:
                for chunk in body.iter_chunks(_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise AudioTooLargeError(
                            f"{ref} is over the limit of {max_bytes / 1048576:.1f} MB"
                        )
                    write(chunk)
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise _translated(exc, ref, "read") from None
        return written

    def upload(self, source: BinaryIO, ref: ObjectRef) -> None:
        """A file's bytes as the object (in parts when large); all or nothing."""
        try:
            self._client.upload_fileobj(source, ref.bucket, ref.key)
        except (ClientError, BotoCoreError) as exc:
            raise _translated(exc, ref, "write") from None
        except Exception as exc:
            # s3transfer wraps failures of a part in its own errors.
            raise StorageUnavailableError(f"Could not write {ref}: {_kind(exc)}") from None

    def put(self, ref: ObjectRef, body: bytes, content_type: str) -> None:
        try:
            self._client.put_object(
                Bucket=ref.bucket, Key=ref.key, Body=body, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as exc:
            raise _translated(exc, ref, "write") from None

    def delete(self, ref: ObjectRef) -> None:
        """Remove the object; one already gone is no error."""
        try:
            self._client.delete_object(Bucket=ref.bucket, Key=ref.key)
        except (ClientError, BotoCoreError) as exc:
            raise _translated(exc, ref, "delete") from None

    def answers(self, bucket: str) -> bool:
        """Whether the storage answers for ``bucket`` at all: any answer counts, a refusal
        too (credentials limited to a folder may not ask about the bucket); silence, a
        timeout or a failure on its side does not."""
        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return 0 < status < 500
        except BotoCoreError:
            return False
        return True

    def listed(self, bucket: str, prefix: str) -> Iterator[tuple[ObjectRef, datetime]]:
        """Every object under ``prefix``, with when it was last written."""
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectRef(bucket, item["Key"]), item["LastModified"]
        except (ClientError, BotoCoreError) as exc:
            raise _translated(exc, ObjectRef(bucket, prefix or "-"), "list") from None


def _translated(exc: Exception, ref: ObjectRef, action: str) -> Exception:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if action == "read" and (code in _NOT_THERE or status in (403, 404)):
            return AudioNotFoundError(f"No audio object this service may read at {ref}")
        if code == "InvalidRange":  # a range from byte 0 is invalid only for an empty object
            return EmptyAudioError(f"{ref} is empty")
        if status < 500 and code not in ("SlowDown", "RequestTimeout", "Throttling"):
            # Our request refused (permissions, a missing bucket to write to): an operator's
            # to fix; until then jobs wait, and every try says why in the log.
            logger.error("Object storage refused to %s %s: %s", action, ref, code or status)
    else:
        logger.warning("Object storage unreachable to %s %s: %s", action, ref, _kind(exc))
    return StorageUnavailableError(f"Object storage could not {action} {ref}: {_kind(exc)}")


def _kind(exc: Exception) -> str:
    """What went wrong, without what botocore may quote (a signed URL carries a signature)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return str(error.get("Code") or "error")
    return type(exc).__name__


def storage_for(settings: Settings) -> ObjectStorage | None:
    """A replica's client, when the settings name any bucket."""
    named = settings.spool_bucket or settings.results_bucket or settings.allowed_audio_buckets
    return ObjectStorage(StorageConfig.from_settings(settings)) if named else None


class StorageWatch:
    """Whether each configured bucket's storage answers, checked in the background (a health
    probe must not wait out a hung storage's timeouts), for /health."""

    def __init__(self, storage: ObjectStorage, buckets: list[str]) -> None:
        self._storage = storage
        self._state = dict.fromkeys(buckets, "unknown")  # each bucket once, in order

    async def check(self) -> None:
        for bucket in self._state:
            answered = await asyncio.to_thread(self._storage.answers, bucket)
            if not answered and self._state[bucket] != "down":
                logger.warning("Object storage does not answer for bucket %s", bucket)
            self._state[bucket] = "up" if answered else "down"

    def summary(self) -> dict[str, Any]:
        states = set(self._state.values())
        status = "down" if "down" in states else "unknown" if "unknown" in states else "up"
        return {"status": status, "buckets": dict(self._state)}

    @classmethod
    def for_settings(cls, settings: Settings, storage: ObjectStorage | None) -> StorageWatch | None:
        if storage is None:
            return None
        named = [settings.spool_bucket, settings.results_bucket]
        named += [g.bucket for g in settings.audio_grants]
        return cls(storage, [b for b in named if b])
