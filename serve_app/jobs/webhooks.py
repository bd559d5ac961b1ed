"""Job webhooks: the final job JSON POSTed to the client's callback_url, signed.

Signature (as Stripe and Standard Webhooks do it, so a captured request cannot be replayed
later with a new timestamp): ``X-Whisper-Signature: sha256=<hex>`` where the hex digest is
HMAC-SHA256(WEBHOOK_SECRET, f"{X-Whisper-Timestamp}.{raw body}").

Callback URLs are client input the service will connect to, so they must not reach the
service's own network (the RabbitMQ management API, the Ray dashboard, cloud metadata): hosts
are resolved and every address must be global, at submit and again at delivery, and the
delivery connects to the address that was checked so a DNS answer cannot change in between.
WEBHOOK_ALLOWED_HOSTS names the hosts an operator trusts anyway.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import re
import ssl
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import httpx

from serve_app.errors import InvalidOptionError, ServiceBusyError
from serve_app.jobs import dns
from serve_app.schemas import WebhookAttempt

SIGNATURE_HEADER = "X-Whisper-Signature"
TIMESTAMP_HEADER = "X-Whisper-Timestamp"
JOB_HEADER = "X-Whisper-Job-Id"

# Only the status matters; a receiver cannot make the service read (or hold) more than this.
MAX_ANSWER_BYTES = 4096
# A submit waits this long for DNS before refusing the URL.
SUBMIT_RESOLVE_TIMEOUT_S = 5.0
LOOKUPS_BUSY_RETRY_S = 5

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Where a URL's authority ends, as httpx splits it (a backslash is no separator there).
_AUTHORITY_END = re.compile(r"[/?#]")


class CallbackRefused(Exception):
    """A callback URL the policy refuses. The message is for the client who submitted it; a
    delivery records only ``short``, which names no address."""

    def __init__(self, message: str, short: str = "address not allowed") -> None:
        super().__init__(message)
        self.short = short


# --- URL policy ------------------------------------------------------------------------------


async def check_callback_url(
    url: str, secret_set: bool, allowed_hosts: Sequence[str], owner: str | None = None
) -> str:
    """Refuse callback URLs the service must not call; returns the URL unchanged. ``owner``
    (the API key's) is who the host lookup counts against."""
    try:
        parsed = parse_callback_url(url)
        if not secret_set:
            raise CallbackRefused(
                "callback_url needs WEBHOOK_SECRET to be set on the service (webhooks are signed)"
            )
        try:
            async with asyncio.timeout(SUBMIT_RESOLVE_TIMEOUT_S):
                await checked_addresses(parsed, allowed_hosts, owner)
        except dns.LookupsBusyError:
            raise ServiceBusyError(
                "Too many callback hosts of this key are being looked up; try again shortly",
                LOOKUPS_BUSY_RETRY_S,
            ) from None
        except TimeoutError:
            raise CallbackRefused(
                f"callback_url host '{_host(parsed)}' could not be resolved"
            ) from None
    except CallbackRefused as exc:
        raise InvalidOptionError(str(exc), param="callback_url") from None
    return url


def parse_callback_url(url: str) -> httpx.URL:
    """Parse as httpx will when sending, so the check and the request see the same host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise CallbackRefused(
            f"callback_url must be an http(s) URL, not '{url}'", "invalid URL"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise CallbackRefused(f"callback_url must be an http(s) URL, not '{url}'", "invalid URL")
    if parsed.userinfo or "@" in _AUTHORITY_END.split(url.split("//", 1)[-1], 1)[0]:
        raise CallbackRefused("callback_url may not carry a user name or password", "invalid URL")
    return parsed


async def checked_addresses(
    url: httpx.URL, allowed_hosts: Sequence[str], owner: str | None = None
) -> list[IPAddress]:
    """The addresses the host resolves to, all allowed by the policy (in resolver order)."""
    host = _host(url)
    addresses = await resolve(host, url.port, owner)
    if not addresses:
        raise CallbackRefused(
            f"callback_url host '{host}' could not be resolved", "host not resolved"
        )
    if not host_allowed(host, allowed_hosts):
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            raise CallbackRefused(
                f"callback_url host '{host}' is a loopback, private, link-local or reserved "
                "address, not allowed (WEBHOOK_ALLOWED_HOSTS lists exceptions)"
            )
    return addresses


async def resolve(host: str, port: int | None, owner: str | None = None) -> list[IPAddress]:
    """IP literals as they are; names through the system resolver, on the lookup threads of
    ``serve_app.jobs.dns`` (never the shared executor). LookupsBusyError when ``owner`` has as
    many lookups pending as it may."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await dns.resolver().getaddrinfo(host, port or 0, owner)
    except (OSError, UnicodeError):
        return []
    return _unique(_ip_literal(str(info[4][0])) for info in infos)


def host_allowed(host: str, allowed_hosts: Iterable[str]) -> bool:
    """Named by the operator: the same host name (any case) or the same IP address."""
    literal = _ip_literal(host)
    for allowed in allowed_hosts:
        allowed_literal = _ip_literal(allowed.strip().strip("[]"))
        if literal is not None and allowed_literal is not None:
            if literal == allowed_literal:
                return True
        elif literal is None and allowed_literal is None and allowed.strip().lower() == host:
            return True
    return False


def address_allowed(address: IPAddress) -> bool:
    """Global unicast only; IPv6 forms that carry an IPv4 address are judged by it too."""
    embedded = _embedded_ipv4(address)
    if embedded is not None and not address_allowed(embedded):
        return False
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _host(url: httpx.URL) -> str:
    # raw_host is the IDNA (ASCII) form that DNS, TLS and the Host header use.
    return url.raw_host.decode("ascii").lower()


def _unique(addresses: Iterable[IPAddress | None]) -> list[IPAddress]:
    return list(dict.fromkeys(a for a in addresses if a is not None))


# --- signing ---------------------------------------------------------------------------------


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


# --- delivery --------------------------------------------------------------------------------


def make_client(verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """A client for deliveries: no proxies from the environment (they would connect by name),
    no redirects, and no kept connections (one made for a host name must not be reused for
    another name that resolved to the same address)."""
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0),
        # deliver() sets one deadline for the whole exchange; per-read limits would only cut
        # a slow but honest receiver short of it.
        timeout=None,
        verify=verify,
    )


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    job_id: str,
    body: bytes,
    secret: str,
    *,
    allowed_hosts: Sequence[str],
    timeout_s: float,
    owner: str | None = None,
) -> tuple[bool, WebhookAttempt]:
    """One POST; delivered means a 2xx answer. Resolving, connecting, sending and reading
    together take at most timeout_s: the whole exchange is cancelled then."""
    at = datetime.now(UTC)
    status: list[int] = []  # set once the answer's status line has arrived
    try:
        async with asyncio.timeout(timeout_s):
            await _post(client, url, job_id, body, secret, allowed_hosts, owner, status)
    except dns.LookupsBusyError:
        return False, WebhookAttempt(at=at, error="host lookups busy")
    except TimeoutError:
        if not status:
            return False, WebhookAttempt(at=at, error="timed out")
    except CallbackRefused as exc:
        return False, WebhookAttempt(at=at, error=exc.short)
    except httpx.HTTPError as exc:
        if not status:
            return False, WebhookAttempt(at=at, error=_public_error(exc))
    # The status is the answer: a body that is slow, cut short or broken does not undo it.
    return 200 <= status[0] < 300, WebhookAttempt(at=at, status_code=status[0])


async def _post(
    client: httpx.AsyncClient,
    url: str,
    job_id: str,
    body: bytes,
    secret: str,
    allowed_hosts: Sequence[str],
    owner: str | None,
    status: list[int],
) -> None:
    parsed = parse_callback_url(url)
    addresses = await checked_addresses(parsed, allowed_hosts, owner)
    headers = _signed_headers(secret, job_id, body)
    for index, address in enumerate(addresses):
        try:
            await _post_to(client, parsed, address, body, headers, status)
            return
        except httpx.ConnectError:
            # Another checked address of the same host may answer (IPv6 then IPv4, say).
            if index == len(addresses) - 1:
                raise


async def _post_to(
    client: httpx.AsyncClient,
    url: httpx.URL,
    address: IPAddress,
    body: bytes,
    headers: dict[str, str],
    status: list[int],
) -> None:
    """POST to this address itself, with the URL's host for the Host header, TLS SNI and
    certificate checks, so what was checked is what is connected to."""
    extensions = {"sni_hostname": _host(url)} if url.scheme == "https" else {}
    async with client.stream(
        "POST",
        url.copy_with(host=str(address)),
        content=body,
        headers={**headers, "Host": url.netloc.decode("ascii")},
        extensions=extensions,
        follow_redirects=False,
    ) as response:
        status.append(response.status_code)
        await read_at_most(response, MAX_ANSWER_BYTES)


async def read_at_most(response: httpx.Response, limit: int) -> bytes:
    """Up to limit bytes of the raw (not decompressed) body; the rest is never read."""
    data = bytearray()
    async for chunk in response.aiter_raw():
        data += chunk[: limit - len(data)]
        if len(data) >= limit:
            break
    return bytes(data)


def _signed_headers(secret: str, job_id: str, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: str(timestamp),
        JOB_HEADER: job_id,
    }


def _public_error(exc: httpx.HTTPError) -> str:
    # Exception texts name internal addresses and ports: the job shows only the kind of error.
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return "invalid answer"
    return "request failed"
