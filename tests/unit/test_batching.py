"""Batching across requests: the batcher's scheduling with a recording decode function (pure
logic), and the real model decoding windows of different files in one batch."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from serve_app.capacity.fair import Tenant
from serve_app.media import audio
from serve_app.model.batching import Batcher
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import Segment, TranscribeOptions
from serve_app.settings import Settings
from tests.support import speech

SR = 16000


class Recorder:
    """Decodes an item to its upper case, remembering each batch; slow enough to overlap."""

    def __init__(self, seconds: float = 0.05, fail_on: str | None = None) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.seconds = seconds
        self.fail_on = fail_on
        self.running = 0
        self.most_at_once = 0
        self.items_running = 0
        self.most_items_at_once = 0
        self.lanes_busy: set[int] = set()
        self.lanes_used: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, key: str, items: list[str], lane: int) -> list[str]:
        with self._lock:
            assert lane not in self.lanes_busy, f"lane {lane} given two batches at once"
            self.lanes_busy.add(lane)
            self.lanes_used.add(lane)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.items_running += len(items)
            self.most_items_at_once = max(self.most_items_at_once, self.items_running)
        try:
            self.batches.append((key, list(items)))
            time.sleep(self.seconds)
            if self.fail_on is not None and self.fail_on in items:
                raise RuntimeError(f"cannot decode {self.fail_on}")
            return [item.upper() for item in items]
        finally:
            with self._lock:
                self.running -= 1
                self.items_running -= len(items)
                self.lanes_busy.discard(lane)


async def test_concurrent_requests_share_batches_of_one_key() -> None:
    decode = Recorder()
    batcher = Batcher(decode, capacity=4, max_wait_s=0.02)
    results = await asyncio.gather(
        batcher.decode("en", ["a1", "a2"]),
        batcher.decode("en", ["b1"]),
        batcher.decode("fr", ["c1"]),
        batcher.decode("en", ["d1", "d2", "d3"]),
    )
    assert results == [["A1", "A2"], ["B1"], ["C1"], ["D1", "D2", "D3"]]
    assert decode.most_at_once == 1  # one batch at a time: the pipeline keeps state
    for key, items in decode.batches:
        assert len(items) <= 4
        assert all(item.startswith("c") for item in items) == (key == "fr")  # never mixed
    assert decode.batches[0] == ("en", ["a1", "a2", "b1", "d1"])  # oldest first, in order
    assert batcher.stats.most_requests == 3


async def test_two_lanes_run_two_batches_at_once_never_two_in_one_lane() -> None:
    decode = Recorder(seconds=0.1)
    batcher = Batcher(decode, capacity=2, max_wait_s=0, lanes=2)
    results = await asyncio.gather(*(batcher.decode("en", [f"r{i}"]) for i in range(6)))
    assert results == [[f"R{i}"] for i in range(6)]
    assert decode.most_at_once == 2  # Recorder asserts no lane had two at once
    assert decode.lanes_used == {0, 1}
    assert sorted(item for _, items in decode.batches for item in items) == [
        f"r{i}" for i in range(6)
    ]


async def test_lanes_share_the_capacity() -> None:
    # The decoder's memory grows with the windows it holds: two lanes hold what one batch would.
    decode = Recorder(seconds=0.05)
    batcher = Batcher(decode, capacity=8, max_wait_s=0, lanes=2)
    units = [[f"u{u}w{i}" for i in range(10)] for u in range(3)]
    results = await asyncio.gather(*(batcher.decode("en", unit) for unit in units))
    assert results == [[item.upper() for item in unit] for unit in units]
    assert decode.most_at_once == 2
    assert decode.most_items_at_once == 8
    assert max(len(items) for _, items in decode.batches) == 4


async def test_a_second_lane_opens_only_for_a_half_full_batch() -> None:
    decode = Recorder(seconds=0.1)
    batcher = Batcher(decode, capacity=16, max_wait_s=0, lanes=2)  # batches of 8
    first = asyncio.create_task(batcher.decode("en", ["a"]))
    await asyncio.sleep(0.02)  # "a" is decoding
    await asyncio.gather(first, batcher.decode("en", ["b"]), batcher.decode("en", ["c"]))
    assert decode.most_at_once == 1  # "b" and "c" waited for the lane, to share a batch
    assert [items for _, items in decode.batches] == [["a"], ["b", "c"]]
    first = asyncio.create_task(batcher.decode("en", ["d"]))
    await asyncio.sleep(0.02)
    await asyncio.gather(first, batcher.decode("en", [f"e{i}" for i in range(4)]))
    assert decode.most_at_once == 2  # half a batch took the free lane


async def test_a_lone_request_waits_at_most_the_wait_bound() -> None:
    batcher = Batcher(Recorder(seconds=0), capacity=8, max_wait_s=0.03)
    await batcher.decode("en", ["warm"])
    started = time.monotonic()
    assert await batcher.decode("en", ["x"]) == ["X"]
    assert time.monotonic() - started < 0.03 + 0.05


async def test_a_full_batch_does_not_wait() -> None:
    batcher = Batcher(Recorder(seconds=0), capacity=2, max_wait_s=5)
    started = time.monotonic()
    assert await batcher.decode("en", ["x", "y"]) == ["X", "Y"]
    assert time.monotonic() - started < 1


async def test_a_long_request_is_split_over_batches_and_others_join_them() -> None:
    decode = Recorder()
    batcher = Batcher(decode, capacity=3, max_wait_s=0.01)
    unit = batcher.decode("en", [f"u{i}" for i in range(7)])
    clip = asyncio.create_task(batcher.decode("en", ["clip"]))
    assert await unit == [f"U{i}" for i in range(7)]
    assert await clip == ["CLIP"]
    assert [len(items) for _, items in decode.batches] == [3, 3, 2]
    assert "clip" in decode.batches[-1][1]


async def test_a_tenants_flood_does_not_hold_back_another_tenants_clip() -> None:
    decode = Recorder(seconds=0.02)
    batcher = Batcher(decode, capacity=3, max_wait_s=0)
    flood = [batcher.decode("en", [f"a{u}w{i}" for i in range(6)], Tenant("a")) for u in range(5)]
    running = [asyncio.create_task(unit) for unit in flood]
    await asyncio.sleep(0.01)  # the flood's first batch is decoding
    clip = await batcher.decode("en", ["b"], Tenant("b"))
    assert clip == ["B"]
    # In the batch after the one that was running: first come first served would have put it
    # behind the flood's 30 windows, in the eleventh.
    assert "b" in decode.batches[1][1], decode.batches[:3]
    await asyncio.gather(*running)
    # Within a tenant, first come first served.
    flood_order = [item for _, items in decode.batches for item in items if item != "b"]
    assert flood_order == [f"a{u}w{i}" for u in range(5) for i in range(6)]


async def test_a_tenant_with_nothing_decoding_takes_a_free_lane_at_once() -> None:
    decode = Recorder(seconds=0.2)
    batcher = Batcher(decode, capacity=8, max_wait_s=0, lanes=2)  # batches of 4
    flood = asyncio.create_task(batcher.decode("en", [f"a{i}" for i in range(4)], Tenant("a")))
    await asyncio.sleep(0.05)  # a's batch decodes in one lane
    started = time.monotonic()
    assert await batcher.decode("en", ["b"], Tenant("b")) == ["B"]
    # In the free lane beside a's batch: not after it (though one window is no half batch).
    assert time.monotonic() - started < 0.3 and decode.most_at_once == 2
    await flood


async def test_tenants_share_batches_by_weight_and_audio_seconds() -> None:
    decode = Recorder(seconds=0)
    batcher = Batcher(decode, capacity=4, max_wait_s=0, cost=lambda item: float(len(item)))
    heavy, light, long = Tenant("heavy", weight=2), Tenant("light"), Tenant("long")
    requests = [
        batcher.decode("en", ["h"] * 40, heavy),
        batcher.decode("en", ["l"] * 40, light),
        batcher.decode("en", ["LLL"] * 40, long),  # three seconds an item
    ]
    await asyncio.gather(*requests)
    # While all three wait, each gets audio seconds in proportion to its weight (heavy twice
    # light's, long's items three seconds each), give or take one item.
    first = [item for _, items in decode.batches[:8] for item in items]
    shares = [first.count("h") / 2, first.count("l"), first.count("LLL") * 3]
    assert max(shares) - min(shares) <= 3, first
    assert first.count("h") > first.count("l") > first.count("LLL")


async def test_one_requests_bad_window_fails_only_that_request() -> None:
    decode = Recorder(fail_on="bad")
    batcher = Batcher(decode, capacity=8, max_wait_s=0.02)
    good, bad, other = await asyncio.gather(
        batcher.decode("en", ["g1", "g2"]),
        batcher.decode("en", ["bad"]),
        batcher.decode("en", ["o1"]),
        return_exceptions=True,
    )
    assert good == ["G1", "G2"] and other == ["O1"]
    assert isinstance(bad, RuntimeError) and "bad" in str(bad)


async def test_a_cancelled_caller_leaves_its_waiting_windows_undecoded() -> None:
    decode = Recorder(seconds=0.1)
    batcher = Batcher(decode, capacity=1, max_wait_s=0)
    first = asyncio.create_task(batcher.decode("en", ["f"]))
    gone = asyncio.create_task(batcher.decode("en", ["g1", "g2", "g3"]))
    await asyncio.sleep(0.05)
    gone.cancel()
    assert await first == ["F"]
    assert await batcher.decode("en", ["after"]) == ["AFTER"]
    decoded = [item for _, items in decode.batches for item in items]
    assert "g2" not in decoded and "g3" not in decoded


def test_windows_of_different_files_decode_in_one_batch_as_they_do_alone(
    speech_dir: Path, tmp_path: Path
) -> None:
    """The batch lays windows end to end (here unpacked: each in a decoding window of its
    own): each one's segments must be what it gives alone, on its own clock, and none may
    take words from its neighbour."""
    settings = Settings(whisper_model="tiny.en", models_dir=tmp_path, whisper_pack_windows=False)
    tiny = Transcriber.load("tiny.en", settings)
    files = []
    for name in ("en_thirty", "en_office"):
        wav = speech.speak(speech.reference(name), "en-us", speech_dir / f"batch_{name}.wav")
        with open(wav, "rb") as f:
            samples = audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples
        files.append((samples, tiny.speech_windows(samples)))
    key = tiny.decoding_key(TranscribeOptions(), "en")
    alone = [tiny.decode_batch(key, tiny.slices(s, w)) for s, w in files]
    together = tiny.decode_batch(key, [x for s, w in files for x in tiny.slices(s, w)])
    assert [_texts(found) for found in together] == [_texts(found) for found in alone[0] + alone[1]]
    for (_samples, windows), found in zip(files, alone, strict=True):
        for window, segments in zip(windows, found, strict=True):
            assert segments and segments[0].start >= 0
            assert segments[-1].end <= window.end - window.start + 0.5
    transcripts = [
        tiny.assemble(s, w, d, TranscribeOptions(), "en", 1.0)
        for (s, w), d in zip(files, alone, strict=True)
    ]
    for name, transcript in zip(("en_thirty", "en_office"), transcripts, strict=True):
        assert speech.word_error_rate(speech.reference(name), transcript.text) < 0.25


def _texts(segments: list[Segment]) -> list[tuple[str, float, float]]:
    # Times to 0.1 s: a window's place in the batch moves its float rounding, not its words.
    return [(s.text, round(s.start, 1), round(s.end, 1)) for s in segments]
