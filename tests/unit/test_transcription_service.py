"""The transcription policy above the model port (serve_app.transcription.service), with a
stand-in port: which call a file gets, where its segments and progress go, speakers beside it.
Pure logic; what the model makes of the audio is the integration tests' part."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.errors import DiarizationUnavailableError
from serve_app.media import audio
from serve_app.model.calls import FileCall, UnitCall
from serve_app.schemas import Segment, TranscribeOptions, Transcript, Word
from serve_app.settings import Settings
from serve_app.transcription.service import TranscriptionService
from serve_app.transcription.speakers import Turn

SR = 16000


def _segment(start: float, end: float) -> Segment:
    return Segment(
        id=0,
        seek=0,
        start=start,
        end=end,
        text=" said",
        tokens=[],
        temperature=0,
        avg_logprob=0,
        compression_ratio=1,
        no_speech_prob=0,
        words=[Word(start=start, end=end, word=" said", probability=1)],
    )


def _transcript(duration: float, *segments: Segment) -> Transcript:
    return Transcript(
        text="said",
        language="en",
        language_probability=1,
        duration=duration,
        segments=list(segments),
        model="m",
    )


class Port:
    """Records each call the policy makes; answers one segment a call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.models: list[str | None] = []
        self.words: list[bool] = []
        self.barrier: asyncio.Barrier | None = None
        self.service: TranscriptionService | None = None
        self.in_flight: list[list[float]] = []

    def _seen(self, name: str) -> None:
        self.calls.append(name)
        if self.service is not None:
            self.in_flight.append([seconds for seconds, _ in self.service.in_flight()])

    async def transcribe(self, call: FileCall) -> Transcript:
        if self.barrier is not None:  # every call in flight before any is recorded
            await self.barrier.wait()
        self._seen("transcribe")
        self.words.append(call.options.word_timestamps)
        return _transcript(len(call.audio) / SR, _segment(0, 1))

    async def stream(self, call: FileCall, on_segments) -> Transcript:  # type: ignore[no-untyped-def]
        self._seen("stream")
        on_segments([_segment(0, 1)])
        on_segments([_segment(1, 2)])
        return _transcript(len(call.audio) / SR, _segment(0, 1), _segment(1, 2))

    async def transcribe_unit(self, call: UnitCall) -> Transcript:
        self._seen("unit")
        self.models.append(call.options.model)
        assert call.windows and call.options.language == "en"
        return _transcript(len(call.audio) / SR, _segment(call.windows[0].start, 1))

    async def detect_language(
        self, part: np.ndarray, model: str | None, allowed: list[str] | None = None
    ) -> tuple[str, float]:
        self._seen("detect")
        self.models.append(model)
        return "en", 0.9


class Speakers:
    async def diarize(self, samples: np.ndarray, options: TranscribeOptions) -> list[Turn]:
        return [Turn(0, 100, "A")]


def _service(
    port: Port, speakers: Speakers | None = None, **settings: object
) -> TranscriptionService:
    service = TranscriptionService(port, Settings(**settings), speakers)  # type: ignore[arg-type]
    port.service = service
    return service


@pytest.fixture(scope="module")
def speech_12s(clip) -> np.ndarray:  # type: ignore[no-untyped-def]
    with open(clip("en_office"), "rb") as f:
        return audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples


async def test_a_short_file_is_one_batched_call_its_segments_handed_on_when_done() -> None:
    port = Port()
    got: list[list[Segment]] = []
    progress: list[tuple[float, float]] = []
    service = _service(port)
    result = await service.transcribe(
        np.zeros(SR * 3, np.float32),
        TranscribeOptions(),
        lambda done, total: progress.append((done, total)),
        got.append,
    )
    assert port.calls == ["transcribe"] and port.in_flight == [[3.0]]
    assert got == [result.segments] and progress == [(0.0, 3.0), (3.0, 3.0)]
    assert service.in_flight() == []


async def test_a_live_caller_or_sequential_decoding_streams_the_segments() -> None:
    for live, cross_batch in ((True, True), (False, False)):
        port, got = Port(), []
        service = _service(port, whisper_cross_batch=cross_batch)
        result = await service.transcribe(
            np.zeros(SR * 3, np.float32), TranscribeOptions(), on_segments=got.append, live=live
        )
        assert port.calls == ["stream"] and len(got) == 2 and len(result.segments) == 2
    port = Port()
    await _service(port).transcribe(np.zeros(SR * 3, np.float32), TranscribeOptions(), live=True)
    assert port.calls == ["transcribe"]  # nobody takes segments as they come: batched


async def test_a_long_file_fans_out_in_units_with_its_model(speech_12s: np.ndarray) -> None:
    port = Port()
    service = _service(port, fanout_min_sec=5, fanout_unit_sec=4, chunk_max_window_sec=4)
    result = await service.transcribe(speech_12s, TranscribeOptions(model="tiny.en"))
    assert port.calls[0] == "detect" and port.calls.count("unit") >= 2
    assert set(port.models) == {"tiny.en"} and result.language == "en"
    assert [s.id for s in result.segments] == list(range(port.calls.count("unit")))


async def test_speakers_beside_the_transcription_or_a_clear_error_without_them() -> None:
    with pytest.raises(DiarizationUnavailableError):
        await _service(Port()).transcribe(
            np.zeros(SR * 3, np.float32), TranscribeOptions(diarize=True)
        )
    got: list[list[Segment]] = []
    port = Port()
    result = await _service(port, Speakers()).transcribe(
        np.zeros(SR * 3, np.float32),
        TranscribeOptions(diarize=True),
        on_segments=got.append,
        live=True,
    )
    # Words were asked of the model for the merge; the caller gets the merged segments once.
    assert port.calls == ["transcribe"] and port.words == [True]
    assert [s.speaker for s in result.segments] == ["A"] and got == [result.segments]
    assert all(s.words is None for s in result.segments)


async def test_in_flight_audio_counts_each_call_until_it_is_answered() -> None:
    port = Port()
    port.barrier = asyncio.Barrier(2)
    service = _service(port)
    await asyncio.gather(
        service.transcribe(np.zeros(SR * 2, np.float32), TranscribeOptions()),
        service.transcribe(np.zeros(SR * 5, np.float32), TranscribeOptions()),
    )
    assert sorted(port.in_flight[0]) == [2.0, 5.0]  # both, while both were waited for
    assert service.in_flight() == []
