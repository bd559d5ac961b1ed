"""How much audio one replica decodes and holds at once, so a burst of uploads is refused with
503 and Retry-After instead of exhausting the node's memory.

Decodes take a slot (``DECODE_CONCURRENCY``); ``DECODE_QUEUE`` more may wait for one. Decoded
samples stay in the replica until the model answers, and their bytes count against
``MAX_DECODED_AUDIO_MB``. Plain asyncio, per replica: no Ray here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from serve_app.errors import ServiceBusyError
from serve_app.media.audio import DecodedAudio

DECODE_BUSY_RETRY_S = 5
HELD_AUDIO_RETRY_S = 10
STREAMS_RETRY_S = 5


class Reservation:
    """Bytes of decoded audio held until ``release`` (idempotent) or the end of a ``with``."""

    def __init__(self, admission: AudioAdmission, nbytes: int) -> None:
        self._admission = admission
        self.nbytes = nbytes
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission.held_bytes -= self.nbytes

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class AudioAdmission:
    def __init__(self, concurrency: int, queue: int | None, max_bytes: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = queue
        self.waiting = 0
        self.max_bytes = max_bytes
        self.held_bytes = 0

    @asynccontextmanager
    async def decode_slot(self) -> AsyncIterator[None]:
        """One decode at a time per slot; refused at once when too many already wait."""
        if self._slots.locked() and self._queue is not None and self.waiting >= self._queue:
            raise ServiceBusyError(
                "Too many files are being decoded; try again shortly", DECODE_BUSY_RETRY_S
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    async def decode(
        self, decode: Callable[..., DecodedAudio], *args: Any
    ) -> tuple[DecodedAudio, Reservation]:
        """Run a blocking decode in a slot, off the event loop; the samples come back with
        their reservation, to release once the model has answered."""
        async with self.decode_slot():
            decoded = await asyncio.to_thread(decode, *args)
        return decoded, self.reserve(decoded.samples.nbytes)

    def reserve(self, nbytes: int) -> Reservation:
        """Hold decoded audio; a lone request always passes, so one file at the duration limit
        is never refused for its size alone."""
        if self.held_bytes and self.held_bytes + nbytes > self.max_bytes:
            raise ServiceBusyError(
                "The service holds as much audio as it may; try again shortly",
                HELD_AUDIO_RETRY_S,
            )
        self.held_bytes += nbytes
        return Reservation(self, nbytes)


class StreamLimit:
    """Open streams of one replica (SSE subscribers, live sessions); past the limit new ones
    are refused at once."""

    def __init__(
        self,
        limit: int,
        what: str = "event streams",
        advice: str = "poll the job or try again shortly",
    ) -> None:
        self.limit = limit
        self.open = 0
        self._what, self._advice = what, advice

    @contextmanager
    def take(self) -> Iterator[None]:
        if self.open >= self.limit:
            raise ServiceBusyError(
                f"{self.open} {self._what} are open, the most this service keeps; {self._advice}",
                STREAMS_RETRY_S,
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
