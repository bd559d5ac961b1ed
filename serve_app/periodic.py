"""A step run every few seconds for as long as a replica lives (reading the broker's queues,
the backlog): a failure is logged once per outage, not every time, and the next try comes on
schedule, so a figure goes stale while its source is down instead of the loop dying. And a
figure read on demand that stands in with its last value while its source fails (``Recent``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


async def every(
    every_s: float, step: Callable[[], Awaitable[object]], what: str, log: logging.Logger
) -> None:
    """Run ``step`` every ``every_s`` until cancelled; ``what`` names it in the warning."""
    failing = False
    while True:
        try:
            await step()
            failing = False
        except Exception as exc:  # the source went away: logged once, tried again next time
            if not failing:
                log.warning("Could not %s: %r", what, exc)
            failing = True
        await asyncio.sleep(every_s)


class Recent(Generic[T]):
    """A value read on demand; while a read fails (logged), the last one read within
    ``stale_s`` stands in for it, then None: a moment's failure of its source (Serve's
    controller busy under load) must not fail whoever asks (a health probe)."""

    def __init__(
        self, read: Callable[[], Awaitable[T]], stale_s: float, what: str, log: logging.Logger
    ) -> None:
        self._read, self._stale_s, self._what, self._log = read, stale_s, what, log
        self._last: tuple[float, T] | None = None

    async def get(self) -> T | None:
        try:
            value = await self._read()
        except Exception as exc:
            self._log.warning("Could not %s: %r", self._what, exc)
            if self._last is not None and time.monotonic() - self._last[0] < self._stale_s:
                return self._last[1]
            return None
        self._last = (time.monotonic(), value)
        return value
