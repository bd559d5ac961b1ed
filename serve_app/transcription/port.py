"""The model port: what the transcription policy needs from the model pools, typed, with the
callbacks a caller hands in. ``serve_app.deployments.client`` is its Ray side; tests and tools
stand in for it without Ray."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from serve_app.media.audio import AudioArray
from serve_app.model.calls import FileCall, UnitCall
from serve_app.schemas import Segment, TranscribeOptions, Transcript
from serve_app.transcription.speakers import Turn

# (seconds done, seconds in all) as a file is transcribed.
ProgressFn = Callable[[float, float], None]
# Segments with absolute timestamps, in order, as soon as every earlier part is done too.
SegmentsFn = Callable[[list[Segment]], None]

Span = tuple[int, int]  # a unit's (start, end) in samples: the same plan gives the same spans


class Checkpoint(Protocol):
    """Where finished units are kept between attempts of one job (the job store)."""

    async def load(self) -> dict[Span, Transcript]: ...

    async def save(self, span: Span, transcript: Transcript) -> None: ...


class UnitModel(Protocol):
    """What a long file's fan-out calls: one unit at a time, and the language once."""

    async def transcribe_unit(self, call: UnitCall) -> Transcript: ...

    async def detect_language(
        self, audio: AudioArray, model: str | None, allowed: list[str] | None = None
    ) -> tuple[str, float]:
        """The language of ``audio``, among ``allowed`` when given."""
        ...


class ModelPort(UnitModel, Protocol):
    async def transcribe(self, call: FileCall) -> Transcript:
        """A short file in one call, batched with other requests' as the replica decodes."""
        ...

    async def stream(self, call: FileCall, on_segments: SegmentsFn) -> Transcript:
        """A short file decoded by itself, each segment handed on as it is decoded."""
        ...


class SpeakerPort(Protocol):
    async def diarize(self, audio: AudioArray, options: TranscribeOptions) -> list[Turn]:
        """The speaker turns of a whole file, within the options' speaker bounds."""
        ...
