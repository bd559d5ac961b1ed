"""The body limit middleware on a real Starlette app, driven through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.api.limits import BodySizeLimit

LIMIT = 1000


async def echo_size(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"size": len(body)})


def _client() -> httpx.AsyncClient:
    app = BodySizeLimit(Starlette(routes=[Route("/", echo_size, methods=["POST"])]), LIMIT)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _chunks(total: int, size: int = 100) -> AsyncIterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


@pytest.mark.parametrize("size", [0, 10, LIMIT])
async def test_bodies_within_the_limit_pass(size: int) -> None:
    async with _client() as client:
        response = await client.post("/", content=b"x" * size)
    assert response.status_code == 200 and response.json() == {"size": size}


async def test_declared_length_over_the_limit_is_refused_unread() -> None:
    async with _client() as client:
        response = await client.post("/", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


async def test_chunked_body_over_the_limit_is_cut_off() -> None:
    async with _client() as client:
        response = await client.post("/", content=_chunks(5 * LIMIT))
    assert response.status_code == 413


async def test_chunked_body_within_the_limit_passes() -> None:
    async with _client() as client:
        response = await client.post("/", content=_chunks(LIMIT))
    assert response.status_code == 200 and response.json() == {"size": LIMIT}
