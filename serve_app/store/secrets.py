"""Secrets the service made for itself at migration time, the same for every replica."""

from __future__ import annotations

from sqlalchemy import Engine, select

from serve_app.store.tables import service_secrets

OWNER_IDS = "owner_ids"


def service_secret(engine: Engine, name: str = OWNER_IDS) -> bytes:
    """Blocking. KeyError if the store has no such secret (a migration makes each one)."""
    query = select(service_secrets.c.value).where(service_secrets.c.name == name)
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    if value is None:
        raise KeyError(f"the store holds no secret {name!r}")
    return str(value).encode()
