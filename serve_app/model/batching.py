"""Batching across requests: the speech windows of concurrent requests (short clips, units of
long files, from HTTP and AMQP alike) decoded together.

At most ``capacity`` windows decode at once across the lanes below: each batch holds up to
``capacity / lanes``, so the decoder's memory is that of one batch of ``capacity`` however
many lanes run. Windows share a batch only when their decoding key matches (a request's
task, language, prompt, temperature): the model decodes a whole batch with one prompt. A
window here is decoded apart from the others in its batch, which only sit side by side (the
transcriber packs a request's short windows together before they come here, never two
requests'). Keys are never mixed. Between tenants (API keys, the AMQP lane) the windows go
in fair shares (``serve_app.capacity.fair``, on audio seconds): a batch holds the key of the
oldest waiting window of the tenant served least, and as many windows of that key as fit,
taken tenant by tenant in the same order and, within a tenant, in arrival order. So a long
unit cannot starve a clip behind it for more than one batch, and a tenant's flood of them
cannot hold back another tenant's clip behind all of its windows.

Up to ``lanes`` batches run at once, each in a lane of its own: faster-whisper's batched
pipeline keeps per-call state on its instance (``last_speech_timestamp``), so the decode
function is given its lane and keeps one pipeline per lane. On a CPU two batches at once keep
the cores busier than one (see ``serve_app.model_options.num_workers``). While the lanes run,
the next batch fills. With every lane free, a batch starts when it is full or its oldest
window has waited ``max_wait_s``, so a lone request waits at most that long; while a lane
runs, another starts only on a batch at least half full.

A batch that fails is decoded again request by request, so one request's bad audio fails only
that request. Plain asyncio: no Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from serve_app import logcontext, metrics
from serve_app.capacity.fair import FairShare, Tenant

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")  # what is decoded: a window's samples
R = TypeVar("R")  # what a window decodes to
# While a lane runs, another starts on a batch at least this full.
_BUSY_FILL = 0.5
# Blocking: one result per item, in order; the last argument is the lane (0 to lanes - 1).
# Called from one thread at a time per lane.
DecodeFn = Callable[[K, list[S], int], list[R]]


@dataclass(eq=False)  # by identity: a request is one caller's
class _Request(Generic[K, S, R]):
    key: K
    items: Sequence[S]
    future: asyncio.Future[list[R]]
    arrived: float
    tenant: Tenant
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
        lanes: int = 1,
        cost: Callable[[S], float] = lambda item: 1.0,
    ) -> None:
        self._decode = decode
        self._cost = cost  # of an item, in what tenants' shares count (audio seconds)
        self._fair = FairShare()
        # Per batch. Two lanes of 8 (base, 2 cores, in process) peaked at 1357-1405 MB on the
        # 8-minute file and up to 1615 MB on the 40-clip burst; two lanes of 4 at 1034-1122 MB
        # and 1165-1171 MB, as fast on the long file (22.9-24.4 s against 21.4-22.7 s) and
        # faster on the burst with 16 clips in flight (30.0-30.4 s against 35.6-37.8 s).
        self.capacity = capacity / lanes
        self.max_wait_s = max_wait_s
        self._pending: list[_Request[K, S, R]] = []
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._lanes = lanes
        self._free_lanes = list(range(lanes))
        self._lane_freed = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._decoding: Counter[str] = Counter()  # tenants with windows in a running batch
        self.stats = BatchStats()

    async def decode(self, key: K, items: Sequence[S], tenant: Tenant | None = None) -> list[R]:
        """Each item's result, decoded in batches with other callers' items of the same key;
        ``tenant``: whose share the items count against (one for all when not given)."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        tenant = tenant or Tenant()
        request = _Request[K, S, R](key, items, loop.create_future(), time.monotonic(), tenant)
        if not any(r.tenant.id == tenant.id and r.waiting for r in self._pending):
            self._fair.arrive(tenant)
        self._pending.append(request)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            # Batches hold many requests' windows: their lines are about no one job.
            self._worker = asyncio.create_task(self._work(), context=logcontext.detached())
        # A caller that goes away cancels its future; its items not yet decoded are dropped.
        return await request.future

    async def _work(self) -> None:
        try:
            while self._prune():
                if not self._free_lanes or (self._busy and not self._enough_for_another_lane()):
                    await self._lane_freed_or_arrival()
                    continue
                batch = await self._next_batch()
                if batch:
                    lane = self._free_lanes.pop(0)
                    task = asyncio.create_task(self._run_in(lane, batch))
                    self._running.add(task)  # the loop keeps only a weak reference
                    task.add_done_callback(self._running.discard)
        except BaseException as exc:
            # Nothing may wait for a worker that is gone (a bug, or the replica stopping).
            logger.exception("The batch worker stopped; failing what waited for it")
            for request in self._pending:
                request.fail(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
            self._pending.clear()
            raise

    def _prune(self) -> bool:
        """Drops requests with nothing left to hand out; whether any are left."""
        self._pending = [r for r in self._pending if r.waiting and not r.future.done()]
        self._fair.forget_idle(r.tenant.id for r in self._pending)
        return bool(self._pending)

    def _first(self) -> _Request[K, S, R]:
        """The next tenant's oldest waiting request (of pruned ``_pending``)."""
        return self._oldest_of_next(self._pending)

    def _oldest_of_next(self, requests: list[_Request[K, S, R]]) -> _Request[K, S, R]:
        tenant = self._fair.next(dict.fromkeys(r.tenant.id for r in requests))
        return next(r for r in requests if r.tenant.id == tenant)

    @property
    def _busy(self) -> bool:
        return len(self._free_lanes) < self._lanes

    def _enough_for_another_lane(self) -> bool:
        """Whether the next window's key has enough waiting for a second lane. Two lanes each
        with whatever waits pack fewer windows together: on the 40-clip burst with four
        requests in flight, 12% slower than one lane; starting the second lane only on half a
        batch, as fast as one lane there, and 19% faster with sixteen in flight. A tenant
        with nothing decoding takes a free lane at once, though: its clip must not wait for
        the batches of another tenant's flood to end."""
        first = self._first()
        alone = first.tenant.id not in self._decoding
        return alone or self._waiting(first.key) >= self.capacity * _BUSY_FILL

    async def _lane_freed_or_arrival(self) -> None:
        self._lane_freed.clear()
        self._arrived.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in (self._lane_freed, self._arrived)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _next_batch(self) -> list[tuple[_Request[K, S, R], int]]:
        if not self._prune():
            return []
        first = self._first()
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
        same = [r for r in self._pending if r.key == first.key]
        while not batch or len(batch) + 1 <= self.capacity:
            same = [r for r in same if r.waiting and not r.future.done()]
            if not same:
                break
            request = self._oldest_of_next(same)
            batch.append((request, request.taken))
            self._fair.charge(request.tenant, self._cost(request.items[request.taken]))
            request.taken += 1
        return batch

    def _waiting(self, key: K) -> float:
        return sum(r.waiting for r in self._pending if r.key == key and not r.future.done())

    async def _run_in(self, lane: int, batch: list[tuple[_Request[K, S, R], int]]) -> None:
        tenants = {request.tenant.id for request, _ in batch}
        self._decoding.update(tenants)
        try:
            await self._run(lane, batch)
        except Exception as exc:
            # _run settles its requests on a decoding error: this is a bug. Nothing awaits
            # this task, so it is logged here and its requests fail.
            logger.exception("A batch failed outside its decoding; failing its requests")
            for request, _ in batch:
                request.fail(exc)
        except BaseException:
            for request, _ in batch:
                request.fail(RuntimeError("The batch was stopped"))
            raise
        finally:
            self._decoding.subtract(tenants)
            self._decoding += Counter()  # drops the tenants at zero
            self._free_lanes.append(lane)
            self._lane_freed.set()

    async def _run(self, lane: int, batch: list[tuple[_Request[K, S, R], int]]) -> None:
        key = batch[0][0].key
        requests = list(dict.fromkeys(request for request, _ in batch))
        started = time.monotonic()
        try:
            results = await asyncio.to_thread(
                self._decode, key, [r.items[i] for r, i in batch], lane
            )
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
                await self._run_alone(lane, request, [i for r, i in batch if r is request])
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
            "Decoded a batch of %d windows from %d requests in %.2f s (lane %d)",
            len(batch),
            len(requests),
            time.monotonic() - started,
            lane,
        )

    async def _run_alone(self, lane: int, request: _Request[K, S, R], indexes: list[int]) -> None:
        try:
            results = await asyncio.to_thread(
                self._decode, request.key, [request.items[i] for i in indexes], lane
            )
        except Exception as exc:
            request.fail(exc)
            return
        for index, result in zip(indexes, results, strict=True):
            request.settle(index, result)
