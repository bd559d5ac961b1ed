"""WHISPER_CROSS_BATCH in one place: whether a replica decodes a request's windows in batches
shared with other requests' (each window apart, side by side) or each request by itself, and
what follows from that for the callers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from serve_app.capacity.fair import FairGate
from serve_app.model.calls import FileCall, UnitCall
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import Transcript


@dataclass(frozen=True)
class DecodePolicy:
    cross_batch: bool

    def streams(self, live: bool) -> bool:
        """Whether a short file whose caller takes segments as they come is streamed: when
        the caller is live (a client streaming the response), or when nothing would have
        been batched with it anyway. Streamed, a file is not batched with others."""
        return live or not self.cross_batch


class Decoding:
    """How a replica runs its calls under the policy.

    Without cross batching a short file is decoded with the previous text as context, and a
    unit of a long file takes a lane of its own (a batched pipeline of the model's, which
    keeps per-call state), so at most one unit per model worker runs (unbounded, they fought:
    a 1-replica pool ran an 8-min file at 0.67x plain batched, 0.82x one at a time). With
    cross batching the batcher hands out the same lanes; the two modes never run together.
    Units waiting for a lane take it in fair shares between tenants (``capacity.fair``)."""

    def __init__(self, policy: DecodePolicy, lanes: int) -> None:
        self.policy = policy
        self._free = list(range(lanes))
        # Unbounded: the replica's max_ongoing_requests bounds the units that reach it.
        self._gate = FairGate(lanes)

    async def file(self, transcriber: Transcriber, call: FileCall) -> Transcript:
        if not self.policy.cross_batch:
            return await asyncio.to_thread(transcriber.transcribe, call.audio, call.options)
        windows = await asyncio.to_thread(transcriber.speech_windows, call.audio, call.options)
        return await transcriber.transcribe_batched(call.audio, windows, call.options)

    @contextlib.asynccontextmanager
    async def unit_lane(self, call: UnitCall, seconds: float) -> AsyncIterator[int | None]:
        """The lane a unit of ``seconds`` of audio decodes on, waited for when it is the
        unit's own; None when the batcher hands lanes out. Held for the ``async with`` block."""
        if self.policy.cross_batch:
            yield None
            return
        async with self._gate.slot(call.options.tenant, seconds):
            lane = self._free.pop()
            try:
                yield lane
            finally:
                self._free.append(lane)

    async def unit(self, transcriber: Transcriber, call: UnitCall, lane: int | None) -> Transcript:
        if lane is None:
            return await transcriber.transcribe_batched(call.audio, call.windows, call.options)
        return await asyncio.to_thread(
            transcriber.transcribe_windows, call.audio, call.windows, call.options, lane
        )
