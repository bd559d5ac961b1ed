"""The service's HTTP API as the CLI uses it, with every failure turned into a message a person
can act on (``CliError``): the service unreachable, a key missing, a refused file."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

FINISHED = frozenset({"completed", "failed", "cancelled"})
# What the CLI reads of one response (a result, a job, an event stream) at most.
MAX_RESPONSE_BYTES = 64 * 2**20
# Exit codes: 1 some file or job failed; 2 the service, the broker or the command line.
FAILED, UNUSABLE = 1, 2


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = UNUSABLE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class JobFailed(Exception):
    """One job ended failed or cancelled; the others go on."""


class ResponseTooLargeError(httpx.TransportError):
    """A response past the CLI's cap on what it reads from a service."""


class _Capped(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, cap: int) -> None:
        self._stream, self._cap = stream, cap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._stream:
            seen += len(chunk)
            if seen > self._cap:
                raise ResponseTooLargeError(f"the response passed {self._cap // 2**20} MB")
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class CappedTransport(httpx.AsyncBaseTransport):
    """Every response read at most ``cap`` bytes, counted as they arrive. Bodies are asked
    for uncompressed and kept as sent: a compressed one cannot grow past the cap when read."""

    def __init__(self, inner: httpx.AsyncBaseTransport, cap: int) -> None:
        self._inner, self._cap = inner, cap

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = await self._inner.handle_async_request(request)
        response.headers.pop("Content-Encoding", None)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Capped(response.stream, self._cap)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class Service:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        capped = CappedTransport(transport or httpx.AsyncHTTPTransport(), max_response_bytes)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout_s, transport=capped
        )

    async def __aenter__(self) -> Service:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._reachable():
            response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise self._refused(response)
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliError(f"{self.url}{path} answered with something that is not JSON") from None

    async def json_object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = await self.json(method, path, **kwargs)
        if not isinstance(body, dict):
            raise CliError(f"{self.url}{path} answered with JSON that is not an object")
        return body

    async def submit(self, audio: Path, fields: dict[str, str]) -> dict[str, Any]:
        f = await asyncio.to_thread(audio.open, "rb")
        try:
            job = await self.json_object(
                "POST", "/v1/jobs", files={"file": (audio.name, f)}, data=fields
            )
        finally:
            f.close()
        return job

    async def follow(
        self, job_id: str, on_event: Callable[[str, dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Hand each event of the job to ``on_event`` until it is finished; a stream the
        service closes (it has a lifetime) is resumed after the last event seen."""
        last: str | None = None
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            with self._reachable():
                async with aconnect_sse(
                    self._http, "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None
                ) as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        raise self._refused(source.response)
                    async for event in source.aiter_sse():
                        last = event.id or last
                        data = _event_data(job_id, event.event, event.data)
                        on_event(event.event, data)
                        if event.event in FINISHED:
                            return data

    def _refused(self, response: httpx.Response) -> CliError:
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = response.text.strip()[:200] or response.reason_phrase
        if response.status_code == 401:
            message += " (give a key with --api-key or WHISPER_SERVE_API_KEY)"
        retry = response.headers.get("retry-after")
        if retry:
            message += f" (the service asks to retry in {retry} s)"
        return CliError(f"{response.status_code}: {message}", FAILED)

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise CliError(
                f"Cannot reach the service at {self.url} ({exc}); is it running? "
                "Point --url or WHISPER_SERVE_URL at it"
            ) from None
        except httpx.TimeoutException:
            raise CliError(f"The service at {self.url} did not answer in time") from None
        except ResponseTooLargeError as exc:
            raise CliError(f"The service at {self.url} sent too much: {exc}", FAILED) from None
        except httpx.HTTPError as exc:
            raise CliError(f"Talking to {self.url} failed: {exc!r}") from None


def _event_data(job_id: str, kind: str, raw: str) -> dict[str, Any]:
    """An event's JSON object; a malformed one fails its job with one line, not a traceback."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise CliError(f"job {job_id}: the service sent a malformed {kind!r} event", FAILED)
    return data
