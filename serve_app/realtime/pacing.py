"""How fast a live session's turns are decoded: the pacing of one session's decodes, and what a
replica's sessions share so that under load ending turns comes before deltas."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class LivePacing:
    step_s: float = 1.0  # new audio in a growing turn before it is decoded again
    window_s: float = 25.0  # longest audio one decode gets: Whisper hears 30 s at a time
    keep_s: float = 10.0  # what a trimmed turn keeps when no word marks a better place
    burst_s: float = 60.0  # audio a client may send at any speed before the rate applies
    max_rate: float = 4.0  # audio seconds per wall-clock second after that


class LiveLoad:
    """What a replica's sessions share: interim decodes (for deltas) take turns through a few
    slots and wait while any final decode is under way, so that under load the pools' time
    goes to ending turns first."""

    def __init__(self, interims: int) -> None:
        self._slots = asyncio.Semaphore(interims)
        self._finals = 0
        self._no_finals = asyncio.Event()
        self._no_finals.set()

    @contextlib.asynccontextmanager
    async def final(self) -> AsyncIterator[None]:
        self._finals += 1
        self._no_finals.clear()
        try:
            yield
        finally:
            self._finals -= 1
            if not self._finals:
                self._no_finals.set()

    @contextlib.asynccontextmanager
    async def interim(self) -> AsyncIterator[None]:
        async with self._slots:
            await self._no_finals.wait()
            yield
