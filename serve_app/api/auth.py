"""Optional API keys: with API_KEYS set, /v1 routes need `Authorization: Bearer <key>`."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve_app.api.deps import BackendDep
from serve_app.errors import UnauthorizedError

_bearer = HTTPBearer(auto_error=False, description="One of the service's API_KEYS")


async def require_api_key(
    backend: BackendDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    keys = backend.settings.api_keys
    if not keys:
        return
    given = credentials.credentials.encode() if credentials else b""
    # Compare against every key in constant time, so timing reveals nothing about any of them.
    matches = [hmac.compare_digest(given, key.get_secret_value().encode()) for key in keys]
    if not given or not any(matches):
        raise UnauthorizedError("Missing or invalid API key: send 'Authorization: Bearer <key>'")
