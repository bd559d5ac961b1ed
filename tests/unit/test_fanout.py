"""Fan-out coordination with stand-in model calls (pure logic: planning, retries, merging)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from serve_app.errors import InferenceError, InvalidOptionError, NoReplicaError
from serve_app.media import audio
from serve_app.model.calls import UnitCall
from serve_app.model.chunking import ChunkingOptions, SampleWindow, Window, WorkUnit, plan
from serve_app.retry import RetryPolicy
from serve_app.schemas import Segment, ServerVad, TranscribeOptions, Transcript, Word
from serve_app.transcription.fanout import FanOut, UnitFailedError, merge
from tests.support import speech

SR = 16000


def _segment(start: float, end: float, text: str) -> Segment:
    return Segment(
        id=0,
        seek=0,
        start=start,
        end=end,
        text=text,
        tokens=[],
        temperature=0,
        avg_logprob=-0.1,
        compression_ratio=1,
        no_speech_prob=0.01,
        words=[Word(start=start, end=end, word=text, probability=0.9)],
    )


def _part(*segments: Segment) -> Transcript:
    return Transcript(
        text="",
        language="en",
        language_probability=1,
        duration=0,
        segments=list(segments),
        model="tiny.en",
    )


def test_merge_makes_timestamps_absolute_and_renumbers() -> None:
    units = [
        WorkUnit(0, 0, SR * 100, (SampleWindow(0, SR * 100),)),
        WorkUnit(1, SR * 120, SR * 200, (SampleWindow(SR * 120, SR * 200),)),
    ]
    parts = [_part(_segment(0, 5, " one"), _segment(5, 9, " two")), _part(_segment(1, 4, " three"))]
    merged = merge(units, parts, SR, 200.0, "en", 0.9)
    assert [(s.id, s.start, s.end) for s in merged.segments] == [
        (0, 0, 5),
        (1, 5, 9),
        (2, 121, 124),
    ]
    assert merged.segments[2].words[0].start == 121  # type: ignore[index]
    assert merged.text == "one two three"
    assert merged.duration == 200.0 and merged.language == "en"


@pytest.fixture(scope="module")
def long_audio(speech_dir: Path) -> np.ndarray:
    wav, _ = speech.long_recording("en_long", speech_dir)
    with open(wav, "rb") as f:
        return audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples


@dataclass(frozen=True)
class Port:
    """The fan-out's model port over a unit function and a language function."""

    unit: Callable[..., Awaitable[Transcript]]
    detect: Callable[[np.ndarray], Awaitable[tuple[str, float]]]
    allowed: list[list[str] | None] = field(default_factory=list)  # each detection's

    async def transcribe_unit(self, call: UnitCall) -> Transcript:
        return await self.unit(call.audio, call.windows, call.options, call.label)

    async def detect_language(
        self, audio: np.ndarray, model: str | None, allowed: list[str] | None = None
    ) -> tuple[str, float]:
        self.allowed.append(allowed)
        return await self.detect(audio)


class StandIn:
    """Records calls; answers each unit with one segment per window."""

    def __init__(self, fail: dict[int, list[Exception]] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[int] = []
        self.detected: list[int] = []
        self.labels: list[str] = []
        self.running = 0
        self.peak = 0

    async def unit(
        self,
        part: np.ndarray,
        windows: list[Window],
        options: TranscribeOptions,
        label: str = "",
    ) -> Transcript:
        index = len(self.calls)
        self.calls.append(len(part))
        self.labels.append(label)
        assert options.language == "en"
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.05)
        self.running -= 1
        errors = self.fail.get(len(part), [])
        if errors:
            raise errors.pop(0)
        return _part(*(_segment(w.start, w.end, f" w{index}") for w in windows))

    async def detect(self, part: np.ndarray) -> tuple[str, float]:
        self.detected.append(len(part))
        return "en", 0.97


async def test_units_run_in_parallel_and_merge_in_order(long_audio: np.ndarray) -> None:
    stand_in = StandIn()
    progress: list[tuple[float, float]] = []
    fan_out = FanOut(Port(stand_in.unit, stand_in.detect), ChunkingOptions(unit_s=60), SR)
    result = await fan_out.transcribe(
        long_audio, TranscribeOptions(), lambda done, total: progress.append((done, total))
    )
    assert len(stand_in.calls) >= 4 and stand_in.peak == len(stand_in.calls)
    assert len(stand_in.detected) == 1  # language detected once, for the whole file
    assert result.language == "en" and result.language_probability == 0.97
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= result.duration
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert len(progress) == len(stand_in.calls)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert progress[-1][1] == pytest.approx(len(long_audio) / SR)
    # Each call names its part and span on the file's clock, for the model replica's log.
    total = len(stand_in.calls)
    assert sorted(stand_in.labels) == sorted(
        f"part {u.index + 1} of {total} ({u.start / SR:.1f}-{u.end / SR:.1f} s)"
        for u in plan(long_audio, SR, ChunkingOptions(unit_s=60))
    )


async def test_a_fixed_language_skips_detection(long_audio: np.ndarray) -> None:
    stand_in = StandIn()
    fan_out = FanOut(Port(stand_in.unit, stand_in.detect), ChunkingOptions(), SR)
    await fan_out.transcribe(long_audio, TranscribeOptions(language="en"))
    assert stand_in.detected == []


async def test_the_requests_languages_and_vad_are_the_plans(long_audio: np.ndarray) -> None:
    """Detection among the request's languages; windows cut by its server_vad settings (the
    recording pauses 1.2 s between paragraphs: a longer silence_duration_ms cuts none there).
    The stand-in answers one segment per window, spanning it."""
    stand_in = StandIn()
    port = Port(stand_in.unit, stand_in.detect)
    fan_out = FanOut(port, ChunkingOptions(), SR)
    default = await fan_out.transcribe(long_audio, TranscribeOptions())
    options = TranscribeOptions(languages=["en", "es"], vad=ServerVad(silence_duration_ms=1500))
    tuned = await fan_out.transcribe(long_audio, options)
    assert port.allowed == [None, ["en", "es"]] and tuned.language == "en"

    def spans(result: Transcript) -> list[tuple[float, float]]:
        return [(round(s.start, 2), round(s.end, 2)) for s in result.segments]

    def planned(chunking: ChunkingOptions) -> list[tuple[float, float]]:
        units = plan(long_audio, SR, chunking)
        return [(round(w.start / SR, 2), round(w.end / SR, 2)) for u in units for w in u.windows]

    assert spans(tuned) == planned(ChunkingOptions().with_vad(options.vad))
    assert spans(default) == planned(ChunkingOptions()) != spans(tuned)
    deaf = TranscribeOptions(vad=ServerVad(threshold=1.0))
    nothing = await fan_out.transcribe(long_audio, deaf)
    assert nothing.segments == [] and nothing.text == ""


async def test_a_failed_unit_is_retried(long_audio: np.ndarray) -> None:
    probe = StandIn()
    fan_out = FanOut(Port(probe.unit, probe.detect), ChunkingOptions(), SR)
    await fan_out.transcribe(long_audio, TranscribeOptions())
    second_len = probe.calls[1]
    stand_in = StandIn(fail={second_len: [InferenceError("replica died")]})
    fan_out = FanOut(
        Port(stand_in.unit, stand_in.detect), ChunkingOptions(), SR, retries=RetryPolicy(3, 0.01)
    )
    result = await fan_out.transcribe(long_audio, TranscribeOptions())
    assert stand_in.calls.count(second_len) == 2 and result.segments


async def test_a_unit_failing_every_attempt_names_the_part(long_audio: np.ndarray) -> None:
    probe = StandIn()
    await FanOut(Port(probe.unit, probe.detect), ChunkingOptions(), SR).transcribe(
        long_audio, TranscribeOptions()
    )
    second_len = probe.calls[1]
    stand_in = StandIn(fail={second_len: [InferenceError("boom")] * 3})
    with pytest.raises(
        UnitFailedError,
        match=r"^Part 2 of \d+ \([\d.]+-[\d.]+ s\) failed "
        r"after 3 attempts: boom$",
    ) as info:
        await FanOut(
            Port(stand_in.unit, stand_in.detect),
            ChunkingOptions(),
            SR,
            retries=RetryPolicy(3, 0.01),
        ).transcribe(long_audio, TranscribeOptions())
    assert info.value.retryable


async def test_no_replica_anywhere_fails_the_file_at_once(long_audio: np.ndarray) -> None:
    probe = StandIn()
    await FanOut(Port(probe.unit, probe.detect), ChunkingOptions(), SR).transcribe(
        long_audio, TranscribeOptions()
    )
    first_len = probe.calls[0]
    stand_in = StandIn(fail={first_len: [NoReplicaError("none running", retry_after_s=15)]})
    with pytest.raises(NoReplicaError):  # the caller comes back later, as the error says
        await FanOut(Port(stand_in.unit, stand_in.detect), ChunkingOptions(), SR).transcribe(
            long_audio, TranscribeOptions()
        )
    assert stand_in.calls.count(first_len) == 1


async def test_deterministic_errors_are_not_retried(long_audio: np.ndarray) -> None:
    probe = StandIn()
    await FanOut(Port(probe.unit, probe.detect), ChunkingOptions(), SR).transcribe(
        long_audio, TranscribeOptions()
    )
    first_len = probe.calls[0]
    stand_in = StandIn(fail={first_len: [InvalidOptionError("bad")]})
    with pytest.raises(InvalidOptionError):
        await FanOut(Port(stand_in.unit, stand_in.detect), ChunkingOptions(), SR).transcribe(
            long_audio, TranscribeOptions()
        )
    assert stand_in.calls.count(first_len) == 1


async def test_a_part_that_fails_for_good_cancels_its_siblings(long_audio: np.ndarray) -> None:
    probe = StandIn()
    await FanOut(Port(probe.unit, probe.detect), ChunkingOptions(unit_s=60), SR).transcribe(
        long_audio, TranscribeOptions()
    )
    first_len = probe.calls[0]
    cancelled: list[int] = []

    async def unit(
        part: np.ndarray, windows: list[Window], options: TranscribeOptions, label: str
    ) -> Transcript:
        if len(part) == first_len:
            raise InvalidOptionError("bad")
        try:
            await asyncio.sleep(30)  # a long unit still decoding on some replica
        except asyncio.CancelledError:
            cancelled.append(len(part))
            raise
        raise AssertionError("a sibling of a failed part ran to its end")

    fan_out = FanOut(Port(unit, probe.detect), ChunkingOptions(unit_s=60), SR)
    with pytest.raises(InvalidOptionError):
        await asyncio.wait_for(fan_out.transcribe(long_audio, TranscribeOptions()), 10)
    assert len(cancelled) == len(probe.calls) - 1


async def test_silence_gives_an_empty_transcript() -> None:
    stand_in = StandIn()
    result = await FanOut(Port(stand_in.unit, stand_in.detect), ChunkingOptions(), SR).transcribe(
        np.zeros(SR * 90, dtype=np.float32), TranscribeOptions(model="tiny.en")
    )
    assert result.text == "" and result.segments == [] and result.duration == 90
    assert stand_in.calls == []


class LastFirst(StandIn):
    """Later units finish first: the first call sleeps longest."""

    async def unit(
        self,
        part: np.ndarray,
        windows: list[Window],
        options: TranscribeOptions,
        label: str = "",
    ) -> Transcript:
        self.started = getattr(self, "started", 0) + 1
        await asyncio.sleep(0.3 - 0.05 * min(self.started, 5))
        return await super().unit(part, windows, options, label)


async def test_segments_are_handed_out_in_order_as_soon_as_possible(
    long_audio: np.ndarray,
) -> None:
    stand_in = LastFirst()
    batches: list[list[Segment]] = []
    finished_units: list[int] = []
    fan_out = FanOut(Port(stand_in.unit, stand_in.detect), ChunkingOptions(unit_s=60), SR)
    result = await fan_out.transcribe(
        long_audio,
        TranscribeOptions(),
        lambda done, _: finished_units.append(len(batches)),
        batches.append,
    )
    streamed = [s for batch in batches for s in batch]
    assert [(s.id, s.start, s.text) for s in streamed] == [
        (s.id, s.start, s.text) for s in result.segments
    ]
    # Units finished last-first: nothing could go out before the first unit was done.
    assert len(batches) == len(stand_in.calls) and finished_units[0] == 0


class MemoryCheckpoint:
    """Finished units kept in memory (the store's part in production)."""

    def __init__(self) -> None:
        self.units: dict[tuple[int, int], Transcript] = {}

    async def load(self) -> dict[tuple[int, int], Transcript]:
        return dict(self.units)

    async def save(self, span: tuple[int, int], transcript: Transcript) -> None:
        self.units[span] = transcript


async def test_a_retry_redoes_only_the_units_not_checkpointed(long_audio: np.ndarray) -> None:
    checkpoint = MemoryCheckpoint()
    first = StandIn()
    fan_out = FanOut(
        Port(first.unit, first.detect), ChunkingOptions(unit_s=60), SR, retries=RetryPolicy(1, 1.0)
    )
    whole = await fan_out.transcribe(long_audio, TranscribeOptions(), checkpoint=checkpoint)
    spans = sorted(checkpoint.units)
    assert len(spans) == len(first.calls) >= 4
    # The first attempt died after some units: only those are kept.
    kept = spans[: len(spans) * 6 // 10]
    checkpoint.units = {span: checkpoint.units[span] for span in kept}
    second = StandIn()
    fan_out = FanOut(
        Port(second.unit, second.detect),
        ChunkingOptions(unit_s=60),
        SR,
        retries=RetryPolicy(1, 1.0),
    )
    resumed = await fan_out.transcribe(long_audio, TranscribeOptions(), checkpoint=checkpoint)
    redone = sorted(second.calls)
    assert redone == sorted(end - start for start, end in spans[len(kept) :])
    assert [s.start for s in resumed.segments] == [s.start for s in whole.segments]
    assert sorted(checkpoint.units) == spans  # the redone units are checkpointed too
