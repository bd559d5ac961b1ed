"""Name lookups of callback hosts, kept apart from every other blocking call.

``getaddrinfo`` holds a thread until the system resolver answers, and a timeout around it
stops only the wait: a host whose DNS hangs keeps its thread. On the shared default executor,
16 such hosts held up every other blocking call of the replica (store writes, decodes) for as
long. Here lookups have a small pool of their own, and one owner (an API key; a service without
keys is one owner) may have only a few in it at once: past that, a lookup is refused at once.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

LOOKUP_THREADS = 8
LOOKUPS_PER_OWNER = 2

AddrInfo = tuple[Any, ...]


class LookupsBusyError(Exception):
    """This owner already has as many lookups pending as it may."""


class Resolver:
    def __init__(self, threads: int = LOOKUP_THREADS, per_owner: int = LOOKUPS_PER_OWNER) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dns")
        self._per_owner = per_owner
        # Lookups submitted and not finished, by owner; a lookup whose caller gave up still
        # counts until its thread is free again, since it still holds that thread.
        self._pending: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def getaddrinfo(self, host: str, port: int, owner: str | None) -> list[AddrInfo]:
        key = owner or ""
        with self._lock:
            if self._pending[key] >= self._per_owner:
                raise LookupsBusyError(f"{self._pending[key]} lookups of this owner are pending")
            self._pending[key] += 1
        try:
            future = self._pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        except BaseException:
            self._done(key)
            raise
        future.add_done_callback(lambda _: self._done(key))
        return await asyncio.wrap_future(future)

    def pending(self, owner: str | None) -> int:
        with self._lock:
            return self._pending[owner or ""]

    def _done(self, key: str) -> None:
        with self._lock:
            self._pending[key] -= 1
            if self._pending[key] <= 0:
                del self._pending[key]


_resolver: Resolver | None = None


def resolver() -> Resolver:
    """The process's resolver, made on first use (its threads start only when needed)."""
    global _resolver
    if _resolver is None:
        _resolver = Resolver()
    return _resolver
