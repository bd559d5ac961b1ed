"""The model runs here: load a Whisper model once, transcribe decoded audio into a Transcript."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from serve_app.capacity.fair import Tenant
from serve_app.model import token_probs
from serve_app.model.batching import Batcher
from serve_app.model.chunking import Window, detect_speech, merge_into_windows, vad_parameters
from serve_app.model.clips import decode_clips
from serve_app.model.languages import checked_language, most_likely
from serve_app.model.packing import Plan, plan, settle
from serve_app.model.quality import Thresholds, guard
from serve_app.model.redo import redecode
from serve_app.model.segments import from_faster_whisper, shifted, split_segments
from serve_app.model.weights import resolve_model_path
from serve_app.model_options import (
    cpu_threads,
    num_workers,
    resolve_compute_type,
    temperature_schedule,
)
from serve_app.schemas import Segment, TranscribeOptions, Transcript
from serve_app.settings import Settings

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

logger = logging.getLogger(__name__)

_MIN_WINDOW_S = 0.1  # VAD pads speech by 400 ms each side: a shorter window holds no word
_PACK_GAP_S = 1.0  # between windows packed together: word timestamps tell them apart


@dataclass(frozen=True)
class DecodeKey:
    """What windows must share to be decoded in one batch: the batch has one prompt."""

    task: str
    language: str
    prompt: str | None
    temperature: float
    words: bool = False  # words decoded: asked for, or needed by the request (see _keyed)
    hotwords: str | None = None  # the request's keywords, read by the decoder like a prompt
    logprobs: bool = False  # words with their tokens' log probabilities (needs words)


class Transcriber:
    """One loaded Whisper model and the decoding defaults it applies to every request."""

    def __init__(self, name: str, model: WhisperModel, settings: Settings, lanes: int = 1) -> None:
        self.name = name
        self._model = model
        self._beam_size = settings.whisper_beam_size
        self._segment_max_s = settings.segment_max_sec
        self._sample_rate = settings.audio_sample_rate
        self._chunking = settings.chunking
        self.thresholds = Thresholds()
        self._vad_parameters = {"min_silence_duration_ms": settings.whisper_vad_min_silence_ms}
        from faster_whisper import BatchedInferencePipeline

        # One pipeline per lane of the batcher: a pipeline keeps per-call state. The model
        # runs as many calls at once as it has workers (one per lane).
        self.lanes = lanes
        self._pipelines = [BatchedInferencePipeline(model) for _ in range(lanes)]
        # Windows of concurrent requests decoded together (serve_app.model.batching): a request's
        # packs (planned from its own windows alone) or its windows unpacked. A Transcriber
        # evicted from a replica's model cache takes its batcher with it.
        self._pack = settings.whisper_pack_windows
        self._pack_capacity = int(settings.chunk_max_window_sec * self._sample_rate)
        self._pack_gap = int(_PACK_GAP_S * self._sample_rate)
        self.batcher: Batcher[DecodeKey, np.ndarray[Any, Any], list[Segment]] = Batcher(
            self.decode_batch,
            settings.whisper_batch_size,
            settings.whisper_batch_wait_ms / 1000,
            lanes=lanes,
            cost=lambda clip: len(clip) / self._sample_rate,  # tenants' shares: audio seconds
        )
        # The pipeline's batch in one lane is the batcher's: WHISPER_BATCH_SIZE windows decode
        # at once across the lanes, re-decoded packs and units without cross-batching too.
        self._batch_size = max(1, int(self.batcher.capacity))

    @classmethod
    def load(cls, name: str, settings: Settings, device: str | None = None) -> Transcriber:
        from serve_app.model.whisper_model import SubBatchedWhisperModel

        device = device or settings.whisper_device
        path = resolve_model_path(name, settings.models_dir)
        workers = num_workers(settings, device)
        model = SubBatchedWhisperModel(
            path,
            device=device,
            compute_type=resolve_compute_type(settings, device),
            cpu_threads=cpu_threads(settings),
            num_workers=workers,
            encode_batch_size=settings.whisper_encode_batch_size,
        )
        logger.info(
            "Loaded model %s from %s on %s, %d batches at once", name, path, device, workers
        )
        return cls(name, model, settings, workers)

    def warm_up(self) -> tuple[float, float]:
        """Blocking: run each decoding path once, so the first request does not pay for
        first-call setup (the VAD model's load, CTranslate2's buffers for a batch). Returns
        the batch's (audio seconds, wall seconds): a first guess at the replica's speed."""
        rng = np.random.default_rng(0)
        noise = rng.normal(0, 0.05, self._pack_capacity).astype(np.float32)
        self.speech_windows(noise[: self._sample_rate])
        self.detect_language(noise)
        batch = [noise, noise[::2]]
        key = DecodeKey("transcribe", "en", None, 0.0)
        started = time.monotonic()
        # Every lane at once, so each of the model's workers sets up its buffers.
        with ThreadPoolExecutor(self.lanes) as pool:
            list(pool.map(lambda lane: self.decode_batch(key, batch, lane), range(self.lanes)))
        took = (time.monotonic() - started) / self.lanes
        return sum(len(clip) for clip in batch) / self._sample_rate, took

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def check_options(self, options: TranscribeOptions) -> str | None:
        return checked_language(self.name, self.multilingual, options)

    def transcribe(self, audio: np.ndarray[Any, Any], options: TranscribeOptions) -> Transcript:
        """Blocking: run it off the event loop."""
        *_, transcript = self.stream(audio, options)
        assert isinstance(transcript, Transcript)
        return transcript

    def stream(
        self, audio: np.ndarray[Any, Any], options: TranscribeOptions
    ) -> Iterator[Segment | Transcript]:
        """Blocking generator: each segment as it is decoded, then the whole transcript."""
        decoding = self._decoding(options)
        if decoding["language"] is None and options.languages:
            # faster-whisper detects among all languages: choose among the allowed first.
            windows = self.speech_windows(audio, options)
            decoding["language"], _ = self.language_of(audio, windows, options)
        segments, info = self._model.transcribe(
            audio,
            **decoding,
            vad_filter=True,
            vad_parameters=vad_parameters(self._vad_parameters, options.vad),
        )
        converted: list[Segment] = []
        recorder = token_probs.Recorder() if options.logprobs else None
        while True:
            # Each step may run on another thread (the replica steps it off the event loop):
            # it records on its own.
            with token_probs.recording(recorder):
                segment = next(segments, None)
            if segment is None:
                break
            converted.append(from_faster_whisper(len(converted), segment, recorder))
            yield converted[-1]
        yield self._transcript(converted, info, options)

    def transcribe_windows(
        self,
        audio: np.ndarray[Any, Any],
        windows: list[Window],
        options: TranscribeOptions,
        lane: int = 0,
    ) -> Transcript:
        """Blocking: decode the given speech windows (seconds) in batches, no VAD pass; what
        the replica's batcher does for one request alone. One call at a time per lane."""
        language, probability = self.language_of(audio, windows, options)
        key = self.decoding_key(options, language)
        decoded = self.decode_windows(key, self.slices(audio, windows), lane)
        return self.assemble(audio, windows, decoded, options, language, probability)

    async def transcribe_batched(
        self,
        audio: np.ndarray[Any, Any],
        windows: list[Window],
        options: TranscribeOptions,
    ) -> Transcript:
        """Like transcribe_windows, the request's decoding windows batched with other
        requests' in flight (the blocking steps off the event loop)."""
        language, probability = await asyncio.to_thread(self.language_of, audio, windows, options)
        key = self.decoding_key(options, language)
        slices = self.slices(audio, windows)
        decoded = await self.decode_windows_batched(key, slices, options.tenant)
        return await asyncio.to_thread(
            self.assemble, audio, windows, decoded, options, language, probability
        )

    def speech_windows(
        self, audio: np.ndarray[Any, Any], options: TranscribeOptions | None = None
    ) -> list[Window]:
        """Blocking: a short file's speech, cut in silences into windows of at most 30 s (with
        the request's VAD settings, if it has its own)."""
        chunking = self._chunking.with_vad(options.vad if options else None)
        found = merge_into_windows(detect_speech(audio, chunking), self._sample_rate, chunking)
        return [
            Window(w.start / self._sample_rate, w.end / self._sample_rate)
            for w in found
            if w.end - w.start >= self._sample_rate * _MIN_WINDOW_S
        ]

    def slices(
        self, audio: np.ndarray[Any, Any], windows: list[Window]
    ) -> list[np.ndarray[Any, Any]]:
        return [audio[self._sample(w.start) : self._sample(w.end)] for w in windows]

    def language_of(
        self,
        audio: np.ndarray[Any, Any],
        windows: list[Window],
        options: TranscribeOptions,
    ) -> tuple[str, float]:
        """Blocking: the requested language, or the one detected in the first window."""
        language = self.check_options(options)
        if language is not None:
            return language, 1.0
        allowed = options.languages
        if allowed and (len(allowed) == 1 or not self.multilingual):
            return ("en" if not self.multilingual else allowed[0]), 1.0
        if not windows:
            return ("" if self.multilingual else "en"), 0.0
        return self.detect_language(self.slices(audio, windows[:1])[0], allowed)

    def decoding_key(self, options: TranscribeOptions, language: str) -> DecodeKey:
        return DecodeKey(
            task=options.task,
            language=language,
            prompt=options.prompt or None,
            temperature=options.temperature,
            words=options.word_timestamps or options.logprobs,
            hotwords=options.hotwords,
            logprobs=options.logprobs,
        )

    def decode_windows(
        self, key: DecodeKey, slices: list[np.ndarray[Any, Any]], lane: int = 0
    ) -> list[list[Segment]]:
        """Blocking, one call at a time per lane: one request's windows decoded, each one's
        segments on its own clock. Short windows are packed together first, with the request's
        own windows only (see serve_app.model.packing)."""
        plan = self._plan(slices)
        key = self._keyed(key, plan)
        decoded, lost = self._settle(plan, self.decode_batch(key, plan.clips, lane))
        if lost:
            again = self.decode_batch(key, [slices[i] for i in lost], lane)
            for i, found in zip(lost, again, strict=True):
                decoded[i] = found
        return decoded

    async def decode_windows_batched(
        self, key: DecodeKey, slices: list[np.ndarray[Any, Any]], tenant: Tenant | None = None
    ) -> list[list[Segment]]:
        """Like decode_windows, the request's packs decoded in the batcher's batches beside
        other requests' packs (never inside one), in ``tenant``'s fair share."""
        plan = self._plan(slices)
        key = self._keyed(key, plan)
        decoded, lost = self._settle(plan, await self.batcher.decode(key, plan.clips, tenant))
        if lost:
            again = await self.batcher.decode(key, [slices[i] for i in lost], tenant)
            for i, found in zip(lost, again, strict=True):
                decoded[i] = found
        return decoded

    def _plan(self, slices: list[np.ndarray[Any, Any]]) -> Plan:
        return plan(slices, self._pack_capacity, self._pack_gap, self._pack)

    def _keyed(self, key: DecodeKey, plan: Plan) -> DecodeKey:
        """The key with the request's need for words: an alignment pass (about 11% of
        decoding time) is taken when a pack's words must be handed back to its windows, a
        window may need cutting into sentences, or the request asked for them. Decided per
        request, so a batch never gives a request words (and so sentence cuts) it would not
        get alone."""
        longest = max((w.end - w.start for w in plan.placed), default=0)
        words = key.words or plan.shared or longest > self._segment_max_s * self._sample_rate
        return replace(key, words=words)

    def _settle(
        self, plan: Plan, decoded: list[list[Segment]]
    ) -> tuple[list[list[Segment]], list[int]]:
        per_window, lost = settle(plan, decoded, self._sample_rate, self._pack_gap)
        if lost:
            logger.info(
                "%d packed windows came back without words at one end; decoding them alone",
                len(lost),
            )
        return per_window, lost

    def decode_batch(
        self, key: DecodeKey, clips: list[np.ndarray[Any, Any]], lane: int = 0
    ) -> list[list[Segment]]:
        """Blocking, one call at a time per lane: decoding windows of at most 30 s (of one
        request or several) decoded in batches, each one's segments on its own clock, with
        words when the key says so; each is decoded apart from the others."""
        return decode_clips(
            self._pipelines[lane],
            clips,
            self._sample_rate,
            batch_size=min(self._batch_size, len(clips)),
            language=key.language,
            task=key.task,
            initial_prompt=key.prompt,
            temperature=key.temperature,
            beam_size=self._beam_size,
            word_timestamps=key.words,
            hotwords=key.hotwords,
            logprobs=key.logprobs,
        )

    def assemble(
        self,
        audio: np.ndarray[Any, Any],
        windows: list[Window],
        decoded: list[list[Segment]],
        options: TranscribeOptions,
        language: str,
        probability: float,
    ) -> Transcript:
        """Blocking: windows' segments on the file's clock, failing windows decoded again,
        segments cut into sentences of at most SEGMENT_MAX_SEC, as one transcript."""
        fixed = options.model_copy(update={"language": language or None})
        per_window = [
            [shifted(s, w.start) for s in found] for w, found in zip(windows, decoded, strict=True)
        ]
        checked = guard(windows, per_window, self.thresholds, lambda w: self._redo(audio, w, fixed))
        parts = split_segments(
            checked, self._segment_max_s, options.word_timestamps or options.logprobs
        )
        return Transcript(
            text="".join(segment.text for segment in parts).strip(),
            language=language,
            language_probability=probability,
            duration=len(audio) / self._sample_rate,
            segments=parts,
            model=self.name,
            task=options.task,
        )

    def _redo(
        self, audio: np.ndarray[Any, Any], window: Window, options: TranscribeOptions
    ) -> list[Segment]:
        start = self._sample(window.start)
        return redecode(
            self._model,
            audio[start : self._sample(window.end)],
            start / self._sample_rate,
            self._decoding(options),
            self.thresholds,
            sampled=options.temperature != 0,
            logprobs=options.logprobs,
        )

    def _sample(self, seconds: float) -> int:
        return int(seconds * self._sample_rate)

    def _decoding(self, options: TranscribeOptions) -> dict[str, Any]:
        """What both decoding paths take from a request (checked) and from settings."""
        return {
            "language": self.check_options(options),
            "task": options.task,
            "initial_prompt": options.prompt or None,
            "temperature": temperature_schedule(options.temperature),
            "beam_size": self._beam_size,
            "word_timestamps": options.word_timestamps or options.logprobs,
            "hotwords": options.hotwords,
        }

    def detect_language(
        self, audio: np.ndarray[Any, Any], allowed: Sequence[str] | None = None
    ) -> tuple[str, float]:
        """The language most likely, among ``allowed`` when given (its probability then
        among theirs)."""
        if not self.multilingual:
            return "en", 1.0
        language, probability, ranked = self._model.detect_language(audio)
        return most_likely(ranked, allowed) if allowed else (language, probability)

    def _transcript(
        self, segments: list[Segment], info: Any, options: TranscribeOptions
    ) -> Transcript:
        return Transcript(
            text="".join(segment.text for segment in segments).strip(),
            language=info.language,
            language_probability=info.language_probability,
            duration=info.duration,
            segments=segments,
            model=self.name,
            task=options.task,
        )
