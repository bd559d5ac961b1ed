from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from serve_app.errors import InvalidOptionError
from serve_app.jobs import webhooks
from serve_app.settings import Settings


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
    retries = Settings(webhook_backoff_sec=2).webhook_retries
    delays = [retries.delay_s(n) for n in (1, 2, 3, 4)]
    assert delays == [2, 4, 8, 16]


PUBLIC = "https://93.184.215.14/hook"  # a global address; no DNS needed


async def _check(url: str, allowed: list[str] | None = None) -> str:
    return await webhooks.check_callback_url(url, secret_set=True, allowed_hosts=allowed or [])


@pytest.mark.parametrize("url", ["ftp://host/x", "file:///etc/passwd", "not a url", "http://"])
async def test_callback_urls_must_be_http(url: str) -> None:
    with pytest.raises(InvalidOptionError, match="http"):
        await _check(url)


async def test_callbacks_need_a_secret() -> None:
    with pytest.raises(InvalidOptionError, match="WEBHOOK_SECRET"):
        await webhooks.check_callback_url(PUBLIC, secret_set=False, allowed_hosts=[])
    assert await _check(PUBLIC) == PUBLIC


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.2",
        "0.0.0.0",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",  # carrier-grade NAT
        "198.18.0.1",  # benchmarking
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "[::1]",
        "[::]",
        "[fe80::1]",
        "[fc00::1]",
        "[fd12:3456::1]",
        "[ff02::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped
        "[::ffff:169.254.169.254]",
        "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
        "[2002:a00:1::]",  # 6to4 of 10.0.0.1
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
        "[::127.0.0.1]",  # IPv4-compatible
        "[2001:db8::1]",  # documentation
    ],
)
async def test_internal_addresses_are_refused(host: str) -> None:
    with pytest.raises(InvalidOptionError, match="not allowed") as refused:
        await _check(f"http://{host}:8265/")
    assert refused.value.param == "callback_url"


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "[fe80::1]", "10.0.0.1"])
def test_the_policy_judges_addresses_not_spellings(host: str) -> None:
    address = ipaddress.ip_address(host.strip("[]"))
    assert not webhooks.address_allowed(address)


def test_global_addresses_pass() -> None:
    for host in ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "2002:5db8:d70e::"]:
        assert webhooks.address_allowed(ipaddress.ip_address(host)), host


async def test_names_that_resolve_to_loopback_are_refused() -> None:
    for url in ["http://localhost:15672/", "http://LOCALHOST/", "http://2130706433/"]:
        with pytest.raises(InvalidOptionError, match="not allowed"):
            await _check(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://guest:guest@127.0.0.1:15672/",
        "https://user@93.184.215.14/hook",
        "https://:pw@93.184.215.14/hook",
        "http://93.184.215.14\\@127.0.0.1/",
    ],
)
async def test_userinfo_is_refused_even_for_allowed_hosts(url: str) -> None:
    with pytest.raises(InvalidOptionError, match="user name or password"):
        await _check(url, allowed=["127.0.0.1", "93.184.215.14"])


async def test_unresolvable_hosts_are_refused() -> None:
    with pytest.raises(InvalidOptionError, match="could not be resolved"):
        await _check("https://no-such-host.invalid/hook")


async def test_the_allow_list_names_exact_hosts() -> None:
    assert await _check("http://127.0.0.1:9000/h", ["127.0.0.1"])
    assert await _check("http://LocalHost:9000/h", ["localhost"])
    assert await _check("http://[::1]:9000/h", ["[0:0::1]"])
    assert await _check("http://[::1]:9000/h", ["::1"])
    for url, allowed in [
        ("http://127.0.0.2/", ["127.0.0.1"]),  # another address
        ("http://localhost/", ["127.0.0.1"]),  # a name is not its address
        ("http://127.0.0.1/", ["localhost"]),
        ("http://localhost./", ["localhost"]),  # not the same spelling
        ("http://sub.localhost/", ["localhost"]),
    ]:
        with pytest.raises(InvalidOptionError, match=r"not allowed|could not be resolved"):
            await _check(url, allowed)


async def test_read_at_most_stops_pulling_the_body() -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1000
            yield b"x" * 1000

    response = httpx.Response(200, content=endless())
    data = await webhooks.read_at_most(response, webhooks.MAX_ANSWER_BYTES)
    await response.aclose()
    assert len(data) == 4096
    assert pulled <= 5000


async def test_a_refused_delivery_names_no_address() -> None:
    async with webhooks.make_client() as client:
        delivered, attempt = await webhooks.deliver(
            client, "http://10.1.2.3:8265/x", "job", b"{}", "k", allowed_hosts=[], timeout_s=5
        )
    assert not delivered and attempt.error == "address not allowed"
