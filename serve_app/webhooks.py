"""Job webhooks: the final job JSON POSTed to the client's callback_url, signed.

Signature (as Stripe and Standard Webhooks do it, so a captured request cannot be replayed
later with a new timestamp): ``X-Whisper-Signature: sha256=<hex>`` where the hex digest is
HMAC-SHA256(WEBHOOK_SECRET, f"{X-Whisper-Timestamp}.{raw body}").
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx

from serve_app.errors import InvalidOptionError
from serve_app.schemas import WebhookAttempt

SIGNATURE_HEADER = "X-Whisper-Signature"
TIMESTAMP_HEADER = "X-Whisper-Timestamp"
JOB_HEADER = "X-Whisper-Job-Id"


def check_callback_url(url: str, secret_set: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidOptionError(
            f"callback_url must be an http(s) URL, not '{url}'", param="callback_url"
        )
    if not secret_set:
        raise InvalidOptionError(
            "callback_url needs WEBHOOK_SECRET to be set on the service (webhooks are signed)",
            param="callback_url",
        )
    return url


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300
) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - stamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


def retry_delay(attempt: int, base_s: float) -> timedelta:
    """Exponential backoff after the given (1-based) failed attempt."""
    return timedelta(seconds=base_s * 2 ** (attempt - 1))


async def deliver(
    client: httpx.AsyncClient, url: str, job_id: str, body: bytes, secret: str
) -> tuple[bool, WebhookAttempt]:
    """One POST; delivered means a 2xx answer."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: str(timestamp),
        JOB_HEADER: job_id,
    }
    at = datetime.now(UTC)
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return False, WebhookAttempt(at=at, error=f"{exc.__class__.__name__}: {exc}"[:500])
    ok = 200 <= response.status_code < 300
    return ok, WebhookAttempt(at=at, status_code=response.status_code)
