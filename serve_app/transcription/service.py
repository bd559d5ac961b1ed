"""The transcription policy above the model port: a short file in one call (streamed when its
caller takes segments as they come), a long file fanned out in units, and speakers beside
either. The edges (the Gateway, the Ingest) hand in the Ray side of the ports."""

from __future__ import annotations

import numpy as np

from serve_app.capacity.fair import Tenant
from serve_app.media.audio import AudioArray
from serve_app.model.calls import FileCall
from serve_app.model.chunking import ChunkingOptions, detect_speech
from serve_app.model.decoding import DecodePolicy
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import Settings
from serve_app.transcription.diarizer import not_installed
from serve_app.transcription.fanout import FanOut
from serve_app.transcription.port import (
    Checkpoint,
    ModelPort,
    ProgressFn,
    SegmentsFn,
    SpeakerPort,
)
from serve_app.transcription.speakers import Turn
from serve_app.transcription.with_speakers import DiarizeLimits, transcribe_with_speakers


class TranscriptionService:
    def __init__(
        self, model: ModelPort, settings: Settings, speakers: SpeakerPort | None = None
    ) -> None:
        self._model = model
        self._speakers = speakers
        self._sample_rate = settings.audio_sample_rate
        self._chunking: ChunkingOptions = settings.chunking
        self._decoding = DecodePolicy(settings.whisper_cross_batch)
        self._diarize_limits = DiarizeLimits(
            settings.diarize_max_audio_sec, settings.diarize_timeout_sec
        )
        self._fan_out = FanOut(model, self._chunking, self._sample_rate)
        # Long files are planned here: load the VAD model now, not in the first one's time.
        detect_speech(np.zeros(self._sample_rate, np.float32), self._chunking)
        # Audio seconds of each call not answered yet, and whose it is.
        self._in_flight: dict[int, tuple[float, str]] = {}

    def in_flight(self) -> list[tuple[float, str]]:
        """Audio seconds and tenant of each transcription waited for here (the backlog's part
        that is not in the job store: sync requests)."""
        return list(self._in_flight.values())

    async def transcribe(
        self,
        audio: AudioArray,
        options: TranscribeOptions,
        on_progress: ProgressFn | None = None,
        on_segments: SegmentsFn | None = None,
        checkpoint: Checkpoint | None = None,
        live: bool = False,
    ) -> Transcript:
        """Short audio in one call; long audio fanned out in units across replicas, resumed
        from ``checkpoint``. A short file's segments reach ``on_segments`` when it is done,
        or one by one as they are decoded when ``model.decoding`` says it streams."""
        token = object()
        tenant = (options.tenant or Tenant()).id
        self._in_flight[id(token)] = (len(audio) / self._sample_rate, tenant)
        try:
            if options.diarize:
                return await self._with_speakers(
                    audio, options, on_progress, on_segments, checkpoint
                )
            return await self._transcribe(
                audio, options, on_progress, on_segments, checkpoint, live
            )
        finally:
            del self._in_flight[id(token)]

    async def _with_speakers(
        self,
        audio: AudioArray,
        options: TranscribeOptions,
        on_progress: ProgressFn | None,
        on_segments: SegmentsFn | None,
        checkpoint: Checkpoint | None,
    ) -> Transcript:
        """Diarization of the whole file (labels stay consistent across a long file's units)
        beside its transcription (``transcription.with_speakers``); segments go out merged."""
        speakers = self._speakers
        if speakers is None:
            raise not_installed()

        async def transcribe(with_words: TranscribeOptions) -> Transcript:
            return await self._transcribe(audio, with_words, on_progress, None, checkpoint, False)

        async def diarize() -> list[Turn]:
            return await speakers.diarize(audio, options)

        duration = len(audio) / self._sample_rate
        merged = await transcribe_with_speakers(
            duration, options, transcribe, diarize, self._diarize_limits
        )
        if on_segments is not None and merged.segments:
            on_segments(merged.segments)
        return merged

    async def _transcribe(
        self,
        audio: AudioArray,
        options: TranscribeOptions,
        on_progress: ProgressFn | None,
        on_segments: SegmentsFn | None,
        checkpoint: Checkpoint | None,
        live: bool,
    ) -> Transcript:
        duration = len(audio) / self._sample_rate
        if on_progress:  # the job's length, known from here on (the backlog counts it)
            on_progress(0.0, duration)
        if duration >= self._chunking.min_fanout_s:
            return await self._fan_out.transcribe(
                audio, options, on_progress, on_segments, checkpoint
            )
        call = FileCall(audio, options)
        if on_segments is not None and self._decoding.streams(live):
            result = await self._model.stream(call, on_segments)
        else:
            result = await self._model.transcribe(call)
            if on_segments is not None and result.segments:
                on_segments(result.segments)
        if on_progress:
            on_progress(duration, duration)
        return result
