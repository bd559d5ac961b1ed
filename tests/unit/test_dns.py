"""Callback host lookups on threads of their own, a few per owner: a host whose DNS hangs
holds up neither the replica's other blocking calls nor other keys' lookups."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from serve_app.errors import ServiceBusyError
from serve_app.jobs import dns, webhooks

HANGING = "hangs.example"
_real_getaddrinfo = socket.getaddrinfo


@pytest.fixture
def hanging_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Lookups of HANGING block until the event is set (at most 10 s); others are answered."""
    release = threading.Event()

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == HANGING:
            release.wait(10)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]
        return _real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield release
    release.set()


async def _quick_to_thread_s() -> float:
    started = time.monotonic()
    await asyncio.to_thread(lambda: None)
    return time.monotonic() - started


async def test_hanging_lookups_hold_up_no_other_blocking_call(
    hanging_dns: threading.Event,
) -> None:
    """16 submissions whose callback host hangs: before, each held a thread of the shared
    executor, and every other blocking call of the replica waited for them."""
    url = f"https://{HANGING}/hook"
    checks = [
        asyncio.create_task(webhooks.check_callback_url(url, True, [], owner="hostile"))
        for _ in range(16)
    ]
    await asyncio.sleep(0.3)
    assert await _quick_to_thread_s() < 0.5
    # Another key's lookup still has threads to run on.
    other = "localhost"
    assert await webhooks.resolve(other, 80, owner="honest")
    done = [c for c in checks if c.done()]
    # All but the owner's few lookups were refused at once, as a 503 to come back later.
    assert len(done) == 16 - dns.LOOKUPS_PER_OWNER
    assert all(isinstance(c.exception(), ServiceBusyError) for c in done)
    hanging_dns.set()
    results = await asyncio.gather(*checks, return_exceptions=True)
    assert results.count(url) == dns.LOOKUPS_PER_OWNER
    await _drained("hostile")


async def test_a_lookup_given_up_on_still_counts_until_its_thread_is_free(
    hanging_dns: threading.Event,
) -> None:
    resolver = dns.Resolver(threads=2, per_owner=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await resolver.getaddrinfo(HANGING, 443, "k")
    assert resolver.pending("k") == 1  # the thread still waits on the resolver
    with pytest.raises(dns.LookupsBusyError):
        await resolver.getaddrinfo(HANGING, 443, "k")
    hanging_dns.set()
    async with asyncio.timeout(5):
        while resolver.pending("k"):
            await asyncio.sleep(0.01)
    assert await resolver.getaddrinfo(HANGING, 443, "k")


async def _drained(owner: str) -> None:
    async with asyncio.timeout(5):
        while dns.resolver().pending(owner):
            await asyncio.sleep(0.01)
