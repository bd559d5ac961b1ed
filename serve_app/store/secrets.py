"""Secrets the service made for itself at migration time, the same for every replica."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr
from sqlalchemy import Engine, select

from serve_app.store.tables import service_secrets

OWNER_IDS = "owner_ids"


def owner_id(key: str, secret: bytes) -> str:
    """What the store keeps of a key: an HMAC under the service's own secret, so that neither
    a database dump nor a guessed key's plain hash ties jobs to a key."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:32]


def weights_by_owner(weights: dict[SecretStr, float], secret: bytes) -> dict[str, float]:
    """API_KEY_WEIGHTS by the keys' owner ids, as tenants have them."""
    return {owner_id(key.get_secret_value(), secret): w for key, w in weights.items()}


def service_secret(engine: Engine, name: str = OWNER_IDS) -> bytes:
    """Blocking. KeyError if the store has no such secret (a migration makes each one)."""
    query = select(service_secrets.c.value).where(service_secrets.c.name == name)
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    if value is None:
        raise KeyError(f"the store holds no secret {name!r}")
    return str(value).encode()
