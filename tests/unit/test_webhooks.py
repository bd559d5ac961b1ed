from __future__ import annotations

import time

import pytest

from serve_app import webhooks
from serve_app.errors import InvalidOptionError


def test_signature_covers_timestamp_and_body() -> None:
    now = int(time.time())
    signature = webhooks.sign("k", now, b'{"a":1}')
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert webhooks.verify("k", str(now), b'{"a":1}', signature)
    assert not webhooks.verify("k", str(now), b'{"a":2}', signature)
    assert not webhooks.verify("other", str(now), b'{"a":1}', signature)
    assert not webhooks.verify("k", str(now + 1), b'{"a":1}', signature)


def test_stale_timestamps_are_refused() -> None:
    old = int(time.time()) - 3600
    assert not webhooks.verify("k", str(old), b"x", webhooks.sign("k", old, b"x"))
    assert not webhooks.verify("k", "soon", b"x", "sha256=00")


def test_backoff_doubles() -> None:
    delays = [webhooks.retry_delay(n, 2).total_seconds() for n in (1, 2, 3, 4)]
    assert delays == [2, 4, 8, 16]


@pytest.mark.parametrize("url", ["ftp://host/x", "file:///etc/passwd", "not a url", "http://"])
def test_callback_urls_must_be_http(url: str) -> None:
    with pytest.raises(InvalidOptionError):
        webhooks.check_callback_url(url, secret_set=True)


def test_callbacks_need_a_secret() -> None:
    with pytest.raises(InvalidOptionError, match="WEBHOOK_SECRET"):
        webhooks.check_callback_url("https://example.com/hook", secret_set=False)
    assert webhooks.check_callback_url("https://example.com/hook", True)
