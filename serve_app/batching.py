"""Batching across requests: the speech windows of concurrent requests (short clips, units of
long files, from HTTP and AMQP alike) decoded together.

A batch holds up to ``capacity`` of windows by their ``weight`` (1 each by default: a count;
the transcriber weighs them by length, since it packs short ones together). Windows share a
batch only when their decoding key matches (a request's task, language,
prompt, temperature): the model decodes a whole batch with one prompt. Keys are never mixed;
a batch holds the oldest waiting window's key and as many windows of that key as fit, in
arrival order, so a long unit cannot starve a clip behind it for more than one batch.

One batch runs at a time: faster-whisper's batched pipeline keeps per-call state on its
instance (``last_speech_timestamp``), and one batch already fills the cores. While it runs, the
next one fills. A batch starts when the decoder is free and the batch is full or its oldest
window has waited ``max_wait_s``, so a lone request waits at most that long.

A batch that fails is decoded again request by request, so one request's bad audio fails only
that request. Plain asyncio: no Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from serve_app import logcontext, metrics

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")  # what is decoded: a window's samples
R = TypeVar("R")  # what a window decodes to
# Blocking: one result per item, in order. Called from one thread at a time.
DecodeFn = Callable[[K, list[S]], list[R]]


@dataclass(eq=False)  # by identity: a request is one caller's
class _Request(Generic[K, S, R]):
    key: K
    items: Sequence[S]
    future: asyncio.Future[list[R]]
    arrived: float
    taken: int = 0  # items handed to a batch so far
    results: dict[int, R] = field(default_factory=dict)

    @property
    def waiting(self) -> int:
        return len(self.items) - self.taken

    def settle(self, index: int, result: R) -> None:
        self.results[index] = result
        if len(self.results) == len(self.items) and not self.future.done():
            self.future.set_result([self.results[i] for i in range(len(self.items))])

    def fail(self, exc: BaseException) -> None:
        self.taken = len(self.items)  # nothing more of it is decoded
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(frozen=True)
class BatchStats:
    batches: int = 0
    items: int = 0
    # The most requests one batch held: above 1 means requests were batched together.
    most_requests: int = 0


class Batcher(Generic[K, S, R]):
    def __init__(
        self,
        decode: DecodeFn[K, S, R],
        capacity: float,
        max_wait_s: float,
        weight: Callable[[S], float] = lambda _: 1.0,
    ) -> None:
        self._decode = decode
        self.capacity = capacity
        self.max_wait_s = max_wait_s
        self._weight = weight
        self._pending: list[_Request[K, S, R]] = []
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    async def decode(self, key: K, items: Sequence[S]) -> list[R]:
        """Each item's result, decoded in batches with other callers' items of the same key."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        request = _Request[K, S, R](key, items, loop.create_future(), time.monotonic())
        self._pending.append(request)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            # Batches hold many requests' windows: their lines are about no one job.
            self._worker = asyncio.create_task(self._work(), context=logcontext.detached())
        # A caller that goes away cancels its future; its items not yet decoded are dropped.
        return await request.future

    async def _work(self) -> None:
        try:
            while self._pending:
                batch = await self._next_batch()
                if batch:
                    await self._run(batch)
        except BaseException as exc:
            # Nothing may wait for a worker that is gone (a bug, or the replica stopping).
            logger.exception("The batch worker stopped; failing what waited for it")
            for request in self._pending:
                request.fail(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
            self._pending.clear()
            raise

    async def _next_batch(self) -> list[tuple[_Request[K, S, R], int]]:
        self._pending = [r for r in self._pending if r.waiting and not r.future.done()]
        if not self._pending:
            return []
        first = self._pending[0]
        deadline = first.arrived + self.max_wait_s
        while self._waiting(first.key) < self.capacity and not first.future.done():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        batch: list[tuple[_Request[K, S, R], int]] = []
        room = self.capacity
        for request in self._pending:
            if request.key != first.key or request.future.done():
                continue
            while request.waiting:
                weight = self._weight(request.items[request.taken])
                if batch and weight > room:
                    return batch
                batch.append((request, request.taken))
                request.taken += 1
                room -= weight
        return batch

    def _waiting(self, key: K) -> float:
        return sum(
            self._weight(item)
            for r in self._pending
            if r.key == key and not r.future.done()
            for item in r.items[r.taken :]
        )

    async def _run(self, batch: list[tuple[_Request[K, S, R], int]]) -> None:
        key = batch[0][0].key
        requests = list(dict.fromkeys(request for request, _ in batch))
        started = time.monotonic()
        try:
            results = await asyncio.to_thread(self._decode, key, [r.items[i] for r, i in batch])
        except Exception as exc:
            if len(requests) == 1:
                requests[0].fail(exc)
                return
            logger.warning(
                "A batch of %d windows from %d requests failed (%r); decoding each request "
                "on its own",
                len(batch),
                len(requests),
                exc,
            )
            for request in requests:
                await self._run_alone(request, [i for r, i in batch if r is request])
            return
        for (request, index), result in zip(batch, results, strict=True):
            request.settle(index, result)
        metrics.observe("whisper_batch_windows", len(batch))
        metrics.observe("whisper_batch_requests", len(requests))
        self.stats = BatchStats(
            self.stats.batches + 1,
            self.stats.items + len(batch),
            max(self.stats.most_requests, len(requests)),
        )
        logger.info(
            "Decoded a batch of %d windows from %d requests in %.2f s",
            len(batch),
            len(requests),
            time.monotonic() - started,
        )

    async def _run_alone(self, request: _Request[K, S, R], indexes: list[int]) -> None:
        try:
            results = await asyncio.to_thread(
                self._decode, request.key, [request.items[i] for i in indexes]
            )
        except Exception as exc:
            request.fail(exc)
            return
        for index, result in zip(indexes, results, strict=True):
            request.settle(index, result)
