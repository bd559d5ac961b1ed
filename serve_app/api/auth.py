"""Optional API keys: with API_KEYS set, /v1 routes need `Authorization: Bearer <key>`.

The key is checked by an ASGI middleware from the request's headers alone, before any of the
body is read: an anonymous 100 MB upload is answered 401 without a byte of it parsed or
spooled. Routes then see who asks as a ``Viewer`` (the key's owner id, never the key), and
where its JSON jobs may name files (``KeyRing.audio_roots``).
"""

from __future__ import annotations

import hmac
from dataclasses import replace
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from serve_app.api.errors import error_response
from serve_app.capacity.fair import Tenant, tenant_of
from serve_app.media.objects import Grant
from serve_app.settings import Settings
from serve_app.store.jobs import EVERYONE, Viewer
from serve_app.store.secrets import owner_id, weights_by_owner

PROTECTED_PREFIX = "/v1"
_bearer = HTTPBearer(auto_error=False, description="One of the service's API_KEYS")


class KeyRing:
    """The configured keys, and what each may do: see its own jobs (a user key) or all of
    them (an admin key, or every caller of a service without keys), and name which server
    files in JSON jobs."""

    def __init__(self, settings: Settings, owner_secret: bytes) -> None:
        self._secret = owner_secret
        self._keys = [k.get_secret_value().encode() for k in settings.api_keys]
        self._admin = [k.get_secret_value().encode() for k in settings.api_admin_keys]
        self._all_roots = list(settings.allowed_audio_roots)
        self._roots = {
            owner_id(key.get_secret_value(), owner_secret): roots
            for key, roots in settings.api_key_audio_roots.items()
        }
        self._weights = weights_by_owner(settings.api_key_weights, owner_secret)
        self._all_grants = [Grant.parse(g) for g in settings.allowed_audio_buckets]
        self._grants = {
            owner_id(key.get_secret_value(), owner_secret): [Grant.parse(g) for g in grants]
            for key, grants in settings.api_key_audio_buckets.items()
        }

    @property
    def required(self) -> bool:
        return bool(self._keys or self._admin)

    def viewer(self, given: bytes) -> Viewer | None:
        """Who sends ``given`` as its bearer token; None for no key or an unknown one."""
        if not self.required:
            return EVERYONE
        # Compare against every key in constant time, so timing reveals nothing about any.
        admin = [hmac.compare_digest(given, key) for key in self._admin]
        user = [hmac.compare_digest(given, key) for key in self._keys]
        if not given or not (any(admin) or any(user)):
            return None
        if any(admin):
            return EVERYONE
        return Viewer(owner=owner_id(given.decode(), self._secret), everyone=False)

    def tenant(self, viewer: Viewer) -> Tenant:
        """Whose fair share ``viewer``'s work counts in (``serve_app.capacity.fair``)."""
        tenant = tenant_of(viewer.owner)
        return replace(tenant, weight=self._weights.get(tenant.id, 1.0))

    def audio_roots(self, viewer: Viewer) -> list[Path]:
        """Where ``viewer``'s JSON jobs may name files: nowhere for a key given no roots."""
        if viewer.everyone:
            return self._all_roots
        return self._roots.get(viewer.owner or "", [])

    def audio_grants(self, viewer: Viewer) -> list[Grant]:
        """Where ``viewer``'s JSON jobs may name s3:// objects: nowhere for a key given none."""
        if viewer.everyone:
            return self._all_grants
        return self._grants.get(viewer.owner or "", [])


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self._keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        viewer = self._keys.viewer(_bearer_token(scope))
        if not scope["path"].startswith(PROTECTED_PREFIX):
            # Open routes (/health) may show more to a caller that sees every job.
            scope.setdefault("state", {})["sees_all"] = viewer is not None and viewer.everyone
            await self.app(scope, receive, send)
            return
        if viewer is None:
            response = _missing_key()
            # Connection: close, so the unread body is not taken for the next request.
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["viewer"] = viewer
        await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket's handshake carries the key as an HTTP request does; without a valid
        one the handshake is answered 401 (403 where the server cannot send a body)."""
        viewer = self._keys.viewer(_bearer_token(scope))
        if viewer is None and scope["path"].startswith(PROTECTED_PREFIX):
            socket = WebSocket(scope, receive, send)
            if "websocket.http.response" in scope.get("extensions", {}):
                await socket.send_denial_response(_missing_key())
            else:
                await socket.close(1008, "Missing or invalid API key")
            return
        scope.setdefault("state", {})["viewer"] = viewer
        await self.app(scope, receive, send)


def _missing_key() -> JSONResponse:
    return error_response(
        401,
        "Missing or invalid API key: send 'Authorization: Bearer <key>'",
        code="invalid_api_key",
    )


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


def get_keys(request: Request) -> KeyRing:
    keys: KeyRing = request.app.state.keys
    return keys


ViewerDep = Annotated[Viewer, Depends(get_viewer)]
KeysDep = Annotated[KeyRing, Depends(get_keys)]
