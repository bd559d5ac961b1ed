"""Optional API keys: with API_KEYS set, /v1 routes need `Authorization: Bearer <key>`.

The key is checked by an ASGI middleware from the request's headers alone, before any of the
body is read: an anonymous 100 MB upload is answered 401 without a byte of it parsed or
spooled. Routes then see who asks as a ``Viewer`` (the key's owner id, never the key).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.errors import error_response
from serve_app.store.jobs import EVERYONE, Viewer

PROTECTED_PREFIX = "/v1"
_bearer = HTTPBearer(auto_error=False, description="One of the service's API_KEYS")


def owner_id(key: str) -> str:
    """What the store keeps of a key: a hash, so a database dump does not leak keys."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, keys: list[SecretStr], admin_keys: list[SecretStr]) -> None:
        self.app = app
        self._keys = [k.get_secret_value().encode() for k in keys]
        self._admin = [k.get_secret_value().encode() for k in admin_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        viewer = self._viewer(_bearer_token(scope))
        if viewer is None:
            response = error_response(
                401,
                "Missing or invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
            # Connection: close, so the unread body is not taken for the next request.
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["viewer"] = viewer
        await self.app(scope, receive, send)

    def _viewer(self, given: bytes) -> Viewer | None:
        if not self._keys and not self._admin:
            return EVERYONE
        # Compare against every key in constant time, so timing reveals nothing about any.
        admin = [hmac.compare_digest(given, key) for key in self._admin]
        user = [hmac.compare_digest(given, key) for key in self._keys]
        if not given or not (any(admin) or any(user)):
            return None
        if any(admin):
            return EVERYONE
        return Viewer(owner=owner_id(given.decode()), everyone=False)


def _bearer_token(scope: Scope) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return bytes(token.strip())
    return b""


def get_viewer(
    request: Request,
    # Declared for the OpenAPI docs' "Authorize" button; the middleware has checked it.
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Viewer:
    viewer: Viewer = getattr(request.state, "viewer", EVERYONE)
    return viewer


ViewerDep = Annotated[Viewer, Depends(get_viewer)]
