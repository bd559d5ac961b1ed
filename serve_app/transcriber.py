"""The model runs here: load a Whisper model once, transcribe decoded audio into a Transcript."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from serve_app.batching import Batcher
from serve_app.chunking import detect_speech, merge_into_windows
from serve_app.errors import InvalidOptionError
from serve_app.model_options import (
    cpu_threads,
    normalize_language,
    num_workers,
    resolve_compute_type,
    temperature_schedule,
)
from serve_app.packing import Placed, covers, plan_packs, unpack
from serve_app.quality import Thresholds, guard
from serve_app.schemas import Segment, TranscribeOptions, Transcript
from serve_app.segments import from_faster_whisper, shifted, split_segments
from serve_app.settings import Settings
from serve_app.weights import resolve_model_path

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

logger = logging.getLogger(__name__)

# VAD pads speech by 400 ms each side: a window shorter than this holds no word.
_MIN_WINDOW_S = 0.1
# Silence between windows packed together: enough for word timestamps to tell them apart.
_PACK_GAP_S = 1.0


@dataclass(frozen=True)
class DecodeKey:
    """What windows must share to be decoded in one batch: the batch has one prompt."""

    task: str
    language: str
    prompt: str | None
    temperature: float
    words: bool = False  # the request asked for word timestamps


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
        # Windows of concurrent requests decoded together (serve_app.batching); a Transcriber
        # evicted from a replica's model cache takes its batcher with it.
        # With packing, a batch is as many windows as WHISPER_BATCH_SIZE packs hold: counted by
        # their sum of lengths instead, nine 25 s windows of a long file made nine packs, which
        # the pipeline decoded as a batch of 8 and one of a single window.
        self._pack = settings.whisper_pack_windows
        self._pack_capacity = int(settings.chunk_max_window_sec * self._sample_rate)
        self._pack_gap = int(_PACK_GAP_S * self._sample_rate)
        self.batcher: Batcher[DecodeKey, np.ndarray[Any, Any], list[Segment]] = Batcher(
            self.decode_batch,
            settings.whisper_batch_size,
            settings.whisper_batch_wait_ms / 1000,
            self._packs if self._pack else len,
            lanes,
        )
        # The pipeline's batch in one lane is the batcher's: WHISPER_BATCH_SIZE windows decode
        # at once across the lanes, re-decoded packs and units without cross-batching too.
        self._batch_size = max(1, int(self.batcher.capacity))

    @classmethod
    def load(cls, name: str, settings: Settings, device: str | None = None) -> Transcriber:
        from serve_app.whisper_model import SubBatchedWhisperModel

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
        language = normalize_language(options.language)
        if not self.multilingual:
            if language not in (None, "en"):
                raise InvalidOptionError(
                    f"Model {self.name} is English-only; it cannot transcribe '{language}'",
                    param="language",
                )
            if options.task == "translate":
                raise InvalidOptionError(
                    f"Model {self.name} is English-only; it cannot translate", param="model"
                )
        return language

    def transcribe(self, audio: np.ndarray[Any, Any], options: TranscribeOptions) -> Transcript:
        """Blocking: run it off the event loop."""
        *_, transcript = self.stream(audio, options)
        assert isinstance(transcript, Transcript)
        return transcript

    def stream(
        self, audio: np.ndarray[Any, Any], options: TranscribeOptions
    ) -> Iterator[Segment | Transcript]:
        """Blocking generator: each segment as it is decoded, then the whole transcript."""
        segments, info = self._model.transcribe(
            audio,
            **self._decoding(options),
            vad_filter=True,
            vad_parameters=self._vad_parameters,
        )
        converted: list[Segment] = []
        for segment in segments:
            converted.append(from_faster_whisper(len(converted), segment))
            yield converted[-1]
        yield self._transcript(converted, info, options)

    def transcribe_windows(
        self,
        audio: np.ndarray[Any, Any],
        windows: list[dict[str, float]],
        options: TranscribeOptions,
        lane: int = 0,
    ) -> Transcript:
        """Blocking: decode the given speech windows (seconds) in batches, no VAD pass; what
        the replica's batcher does for one request alone. One call at a time per lane."""
        language, probability = self.language_of(audio, windows, options)
        key = self.decoding_key(options, language)
        decoded = self.decode_batch(key, self.slices(audio, windows), lane)
        return self.assemble(audio, windows, decoded, options, language, probability)

    def speech_windows(self, audio: np.ndarray[Any, Any]) -> list[dict[str, float]]:
        """Blocking: a short file's speech, cut in silences into windows of at most 30 s."""
        found = merge_into_windows(
            detect_speech(audio, self._chunking), self._sample_rate, self._chunking
        )
        return [
            {"start": w.start / self._sample_rate, "end": w.end / self._sample_rate}
            for w in found
            if w.end - w.start >= self._sample_rate * _MIN_WINDOW_S
        ]

    def slices(
        self, audio: np.ndarray[Any, Any], windows: list[dict[str, float]]
    ) -> list[np.ndarray[Any, Any]]:
        return [audio[self._sample(w["start"]) : self._sample(w["end"])] for w in windows]

    def language_of(
        self,
        audio: np.ndarray[Any, Any],
        windows: list[dict[str, float]],
        options: TranscribeOptions,
    ) -> tuple[str, float]:
        """Blocking: the requested language, or the one detected in the first window."""
        language = self.check_options(options)
        if language is not None:
            return language, 1.0
        if not windows:
            return ("" if self.multilingual else "en"), 0.0
        return self.detect_language(self.slices(audio, windows[:1])[0])

    def decoding_key(self, options: TranscribeOptions, language: str) -> DecodeKey:
        return DecodeKey(
            task=options.task,
            language=language,
            prompt=options.prompt or None,
            temperature=options.temperature,
            words=options.word_timestamps,
        )

    def _packs(self, slices: Sequence[np.ndarray[Any, Any]]) -> int:
        """How many decoding windows these windows pack into."""
        placed = plan_packs([len(s) for s in slices], self._pack_capacity, self._pack_gap)
        return 1 + max((w.pack for w in placed), default=-1)

    def decode_batch(
        self, key: DecodeKey, slices: list[np.ndarray[Any, Any]], lane: int = 0
    ) -> list[list[Segment]]:
        """Blocking, one call at a time per lane: windows (of one request or several)
        decoded together, each one's segments on its own clock. Short windows are packed
        into shared 30 s decoding windows first (see serve_app.packing)."""
        lengths = [len(s) for s in slices]
        if self._pack:
            placed = plan_packs(lengths, self._pack_capacity, self._pack_gap)
        else:
            placed = [Placed(i, 0, n) for i, n in enumerate(lengths)]
        # Each pack's windows (their indexes), in their order in the pack.
        members: list[list[int]] = [[] for _ in range(max(w.pack for w in placed) + 1)]
        for i, window in enumerate(placed):
            members[window.pack].append(i)
        # Silence wherever no window lies: the gaps between a pack's windows.
        packs = [np.zeros(placed[m[-1]].end, np.float32) for m in members]
        for window, samples in zip(placed, slices, strict=True):
            packs[window.pack][window.start : window.end] = samples
        # Words cost an alignment pass (about 11% of decoding time): taken when a pack's words
        # must be handed back to its windows, a window may need cutting into sentences, or
        # the request asked for them.
        words = (
            key.words
            or any(len(m) > 1 for m in members)
            or any(n > self._segment_max_s * self._sample_rate for n in lengths)
        )
        decoded: list[list[Segment]] = [[] for _ in slices]
        for pack, found in zip(members, self._decode_clips(key, packs, words, lane), strict=True):
            taken = unpack(found, [placed[i] for i in pack], self._sample_rate, self._pack_gap)
            for i, segments in zip(pack, taken, strict=True):
                decoded[i] = segments
        # Without timestamp tokens the model may end a pack at a pause: the windows after it
        # get no word, or a stray one (tiny.en stopped after a 2.5 s clip packed before a
        # 12.7 s one; base left one word of a 6 s clip). Those are decoded again, each in a
        # decoding window of its own.
        lost = [
            i
            for i, (w, found) in enumerate(zip(placed, decoded, strict=True))
            if len(members[w.pack]) > 1 and not covers(found, lengths[i] / self._sample_rate)
        ]
        if lost:
            logger.info(
                "%d packed windows came back without words at one end; decoding them alone",
                len(lost),
            )
            again = self._decode_clips(key, [slices[i] for i in lost], words, lane)
            for i, found in zip(lost, again, strict=True):
                decoded[i] = found
        return decoded

    def _decode_clips(
        self, key: DecodeKey, clips: list[np.ndarray[Any, Any]], words: bool, lane: int
    ) -> list[list[Segment]]:
        """Clips of at most 30 s decoded in batches by the batched pipeline, each one's
        segments on its own clock. They are laid end to end in one array, each a clip of its
        own: the pipeline decodes clips apart (no previous text), as one call per clip would."""
        offsets = np.cumsum([0] + [len(c) for c in clips[:-1]])
        timestamps = [
            {"start": int(o) / self._sample_rate, "end": (int(o) + len(c)) / self._sample_rate}
            for o, c in zip(offsets, clips, strict=True)
        ]
        segments, _ = self._pipelines[lane].transcribe(
            np.concatenate(clips),
            language=key.language,
            task=key.task,
            initial_prompt=key.prompt,
            temperature=key.temperature,
            beam_size=self._beam_size,
            word_timestamps=words,
            # Not with timestamp tokens: the batched pipeline drops what follows a window's
            # last timestamp (sequential decoding decodes it again in the next window), which
            # cost 6 points of WER on the 8-minute file. Packs are checked instead (see below).
            without_timestamps=True,
            clip_timestamps=timestamps,
            batch_size=min(self._batch_size, len(clips)),
        )
        # The pipeline puts a clip at its start rounded down to a sample and names its
        # segments' clip by their seek (that start in frames): both computed here its way.
        starts = [int(t["start"] * self._sample_rate) / self._sample_rate for t in timestamps]
        fps = self._model.frames_per_second
        index = {int(start * fps): i for i, start in enumerate(starts)}
        decoded: list[list[Segment]] = [[] for _ in clips]
        for segment in segments:
            i = index[segment.seek]
            decoded[i].append(shifted(from_faster_whisper(0, segment), -starts[i]))
        return decoded

    def assemble(
        self,
        audio: np.ndarray[Any, Any],
        windows: list[dict[str, float]],
        decoded: list[list[Segment]],
        options: TranscribeOptions,
        language: str,
        probability: float,
    ) -> Transcript:
        """Blocking: windows' segments on the file's clock, failing windows decoded again,
        segments cut into sentences of at most SEGMENT_MAX_SEC, as one transcript."""
        fixed = options.model_copy(update={"language": language or None})
        per_window = [
            [shifted(s, w["start"]) for s in found]
            for w, found in zip(windows, decoded, strict=True)
        ]
        checked = guard(windows, per_window, self.thresholds, lambda w: self._redo(audio, w, fixed))
        parts = split_segments(checked, self._segment_max_s, options.word_timestamps)
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
        self, audio: np.ndarray[Any, Any], window: dict[str, float], options: TranscribeOptions
    ) -> list[Segment]:
        """A window that failed the quality checks, decoded sequentially with the temperature
        fallback and the thresholds, on the file's clock."""
        start = self._sample(window["start"])
        segments, _ = self._model.transcribe(
            audio[start : self._sample(window["end"])],
            **{**self._decoding(options), "word_timestamps": True},
            vad_filter=False,
            condition_on_previous_text=False,
            compression_ratio_threshold=self.thresholds.compression_ratio,
            log_prob_threshold=self.thresholds.log_prob,
            no_speech_threshold=self.thresholds.no_speech,
        )
        offset = start / self._sample_rate
        return [shifted(from_faster_whisper(0, segment), offset) for segment in segments]

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
            "word_timestamps": options.word_timestamps,
        }

    def detect_language(self, audio: np.ndarray[Any, Any]) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        language, probability, _ = self._model.detect_language(audio)
        return language, probability

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
