"""WHISPER_CROSS_BATCH's one policy (serve_app.model.decoding), with a stand-in transcriber
that records which of its paths each call took (pure logic: the paths are the model's own)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from serve_app.capacity.fair import Tenant
from serve_app.model.calls import FileCall, UnitCall
from serve_app.model.chunking import Window
from serve_app.model.decoding import DecodePolicy, Decoding
from serve_app.schemas import TranscribeOptions, Transcript

AUDIO = np.zeros(16000, np.float32)
WINDOWS = [Window(0.0, 1.0)]


def _transcript(text: str) -> Transcript:
    return Transcript(
        text=text, language="en", language_probability=1, duration=1, segments=[], model="m"
    )


class StandIn:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.lanes_busy: dict[int, int] = {}
        self.overlap = 0
        self._running = 0
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        self.paths.append("sequential")
        return _transcript("sequential")

    def speech_windows(self, audio: np.ndarray, options: TranscribeOptions) -> list[Window]:
        self.paths.append("windows")
        return WINDOWS

    async def transcribe_batched(
        self, audio: np.ndarray, windows: list[Window], options: TranscribeOptions
    ) -> Transcript:
        self.paths.append(f"batched {windows}")
        self._running += 1
        self.overlap = max(self.overlap, self._running)
        await asyncio.sleep(0.05)
        self._running -= 1
        return _transcript("batched")

    def transcribe_windows(
        self, audio: np.ndarray, windows: list[Window], options: TranscribeOptions, lane: int
    ) -> Transcript:
        with self._lock:
            self.paths.append(f"lane {lane}")
            self.lanes_busy[lane] = self.lanes_busy.get(lane, 0) + 1
            self._running += 1
            self.overlap = max(self.overlap, self._running)
            assert self.lanes_busy[lane] == 1, "two units on one lane"
        time.sleep(0.05)
        with self._lock:
            self.lanes_busy[lane] -= 1
            self._running -= 1
        return _transcript(f"lane {lane}")


def test_a_short_file_streams_when_live_or_when_nothing_batches_anyway() -> None:
    assert DecodePolicy(cross_batch=True).streams(live=True)
    assert not DecodePolicy(cross_batch=True).streams(live=False)
    assert DecodePolicy(cross_batch=False).streams(live=False)


async def test_a_short_file_is_batched_on_its_own_windows_or_decoded_sequentially() -> None:
    batched, sequential = StandIn(), StandIn()
    call = FileCall(AUDIO, TranscribeOptions())
    result = await Decoding(DecodePolicy(cross_batch=True), lanes=1).file(batched, call)  # type: ignore[arg-type]
    assert result.text == "batched" and batched.paths == ["windows", f"batched {WINDOWS}"]
    result = await Decoding(DecodePolicy(cross_batch=False), lanes=1).file(sequential, call)  # type: ignore[arg-type]
    assert result.text == "sequential" and sequential.paths == ["sequential"]


async def _units(
    decoding: Decoding,
    model: StandIn,
    count: int,
    tenant: str = "*",
    order: list[str] | None = None,
) -> list[str]:
    async def one(n: int) -> str:
        call = UnitCall(AUDIO, WINDOWS, TranscribeOptions(tenant=Tenant(tenant)), "a part")
        async with decoding.unit_lane(call, 60.0) as lane:
            if order is not None:
                order.append(f"{tenant}{n}")
            return (await decoding.unit(model, call, lane)).text  # type: ignore[arg-type]

    return await asyncio.gather(*(one(n) for n in range(count)))


async def test_without_cross_batching_each_unit_takes_a_lane_of_its_own() -> None:
    model = StandIn()
    texts = await _units(Decoding(DecodePolicy(cross_batch=False), lanes=2), model, 6)
    assert sorted(set(texts)) == ["lane 0", "lane 1"]
    assert model.overlap == 2  # both lanes worked, never more at once


async def test_without_cross_batching_lanes_go_in_fair_shares_between_tenants() -> None:
    model, order = StandIn(), []
    decoding = Decoding(DecodePolicy(cross_batch=False), lanes=1)
    flood = asyncio.create_task(_units(decoding, model, 5, "a", order))
    await asyncio.sleep(0.01)  # a0 decodes, a1-a4 wait for the lane
    await asyncio.gather(flood, _units(decoding, model, 1, "b", order))
    assert order == ["a0", "b0", "a1", "a2", "a3", "a4"]


async def test_with_cross_batching_units_go_to_the_batcher_without_waiting_for_a_lane() -> None:
    model = StandIn()
    texts = await _units(Decoding(DecodePolicy(cross_batch=True), lanes=1), model, 4)
    assert texts == ["batched"] * 4
    assert model.overlap == 4  # the batcher decides what runs together, not a lane
