"""The service's HTTP API as the CLI uses it, with every failure turned into a message a person
can act on (``CliError``): the service unreachable, a key missing, a refused file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

FINISHED = frozenset({"completed", "failed", "cancelled"})
# Exit codes: 1 some file or job failed; 2 the service, the broker or the command line.
FAILED, UNUSABLE = 1, 2


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = UNUSABLE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class JobFailed(Exception):
    """One job ended failed or cancelled; the others go on."""


class Service:
    def __init__(self, url: str, api_key: str | None, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)

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
        return (await self.request(method, path, **kwargs)).json()

    async def submit(self, audio: Path, fields: dict[str, str]) -> dict[str, Any]:
        f = await asyncio.to_thread(audio.open, "rb")
        try:
            job: dict[str, Any] = await self.json(
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
                        data: dict[str, Any] = event.json() if event.data else {}
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
        except httpx.HTTPError as exc:
            raise CliError(f"Talking to {self.url} failed: {exc!r}") from None
