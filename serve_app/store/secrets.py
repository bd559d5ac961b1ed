"""Secrets the service made for itself at migration time, the same for every replica."""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import Engine, select

from serve_app.store.tables import service_secrets

OWNER_IDS = "owner_ids"


def owner_id(key: str, secret: bytes) -> str:
    """What the store keeps of a key: an HMAC under the service's own secret, so that neither
    a database dump nor a guessed key's plain hash ties jobs to a key."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:32]


def service_secret(engine: Engine, name: str = OWNER_IDS) -> bytes:
    """Blocking. KeyError if the store has no such secret (a migration makes each one)."""
    query = select(service_secrets.c.value).where(service_secrets.c.name == name)
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    if value is None:
        raise KeyError(f"the store holds no secret {name!r}")
    return str(value).encode()
