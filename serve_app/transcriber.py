"""The model runs here: load a Whisper model once, transcribe decoded audio into a Transcript."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from faster_whisper.tokenizer import _LANGUAGE_CODES

from serve_app.errors import InvalidOptionError, ModelNotServedError
from serve_app.quality import Thresholds, Verdict, by_window, judge
from serve_app.schemas import Segment, TranscribeOptions, Transcript, Word
from serve_app.segments import shifted, split_segments
from serve_app.settings import Settings
from serve_app.weights import resolve_model_path

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

logger = logging.getLogger(__name__)

OPENAI_MODEL_ALIAS = "whisper-1"
LANGUAGES = frozenset(_LANGUAGE_CODES)
_FALLBACK_STEP = 0.2


def served_model(requested: str | None, settings: Settings) -> str:
    """Map the model a client asked for to one this service holds."""
    if not requested or requested == OPENAI_MODEL_ALIAS:
        return settings.whisper_model
    if requested in settings.served_models:
        return requested
    raise ModelNotServedError(
        f"Model '{requested}' is not served here; available: "
        + ", ".join([*settings.served_models, OPENAI_MODEL_ALIAS])
    )


def normalize_language(language: str | None) -> str | None:
    """'' or None means detect; 'en-US' and 'EN' mean 'en'."""
    if language is None or not language.strip():
        return None
    code = language.strip().lower().replace("_", "-").split("-")[0]
    if code not in LANGUAGES:
        raise InvalidOptionError(f"Unknown language code '{language}'", param="language")
    return code


def temperature_schedule(temperature: float) -> tuple[float, ...]:
    """OpenAI semantics: start at the given temperature and fall back upwards on failures."""
    steps = np.arange(temperature, 1.0 + 1e-6, _FALLBACK_STEP)
    return tuple(round(float(t), 2) for t in steps) or (temperature,)


def resolve_compute_type(settings: Settings, device: str) -> str:
    if settings.whisper_compute_type is not None:
        return settings.whisper_compute_type
    return "float16" if device == "cuda" else "int8" if device == "cpu" else "default"


def cpu_threads(settings: Settings) -> int:
    # CTranslate2's own default is 4 threads, but it defers to OMP_NUM_THREADS, which Ray sets
    # to a replica's num_cpus (1 here): that alone made replicas ~20% slower than plain
    # faster-whisper on a 2-core machine. Ask for the library's default explicitly.
    return settings.whisper_cpu_threads or min(4, os.cpu_count() or 1)


class Transcriber:
    """One loaded Whisper model and the decoding defaults it applies to every request."""

    def __init__(self, name: str, model: WhisperModel, settings: Settings) -> None:
        self.name = name
        self._model = model
        self._beam_size = settings.whisper_beam_size
        self._batch_size = settings.whisper_batch_size
        self._segment_max_s = settings.segment_max_sec
        self._sample_rate = settings.audio_sample_rate
        self.thresholds = Thresholds()
        self._vad_parameters = {"min_silence_duration_ms": settings.whisper_vad_min_silence_ms}
        from faster_whisper import BatchedInferencePipeline

        self._batched = BatchedInferencePipeline(model)

    @classmethod
    def load(cls, name: str, settings: Settings, device: str | None = None) -> Transcriber:
        from faster_whisper import WhisperModel

        device = device or settings.whisper_device
        path = resolve_model_path(name, settings.models_dir)
        model = WhisperModel(
            path,
            device=device,
            compute_type=resolve_compute_type(settings, device),
            cpu_threads=cpu_threads(settings),
            num_workers=settings.whisper_num_workers,
        )
        logger.info("Loaded model %s from %s on %s", name, path, device)
        return cls(name, model, settings)

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
            converted.append(_convert_segment(len(converted), segment))
            yield converted[-1]
        yield self._transcript(converted, info, options)

    def transcribe_windows(
        self,
        audio: np.ndarray[Any, Any],
        windows: list[dict[str, float]],
        options: TranscribeOptions,
    ) -> Transcript:
        """Blocking: decode the given speech windows (seconds) in batches, no VAD pass.

        The batched pipeline gives one segment per window (up to 30 s): with word timestamps,
        always asked for here, each is cut into sentences of at most SEGMENT_MAX_SEC."""
        segments, info = self._batched.transcribe(
            audio,
            **{**self._decoding(options), "word_timestamps": True},
            clip_timestamps=windows,
            batch_size=self._batch_size,
        )
        converted = [_convert_segment(i, segment) for i, segment in enumerate(segments)]
        checked = self._guard(audio, windows, converted, options)
        parts = split_segments(checked, self._segment_max_s, options.word_timestamps)
        return self._transcript(parts, info, options)

    def _guard(
        self,
        audio: np.ndarray[Any, Any],
        windows: list[dict[str, float]],
        segments: list[Segment],
        options: TranscribeOptions,
    ) -> list[Segment]:
        """Windows that fail the thresholds are decoded again one by one, sequentially, with
        the temperature fallback (see serve_app.quality)."""
        kept: list[Segment] = []
        for window, found in zip(windows, by_window(segments, windows), strict=True):
            verdicts = [judge(segment, self.thresholds) for segment in found]
            if Verdict.REDO not in verdicts:
                kept += [s for s, v in zip(found, verdicts, strict=True) if v is Verdict.OK]
                continue
            logger.info(
                "Window %.1f-%.1f s failed the quality checks; decoding it again",
                window["start"],
                window["end"],
            )
            kept += self._redo(audio, window, options)
        return kept

    def _redo(
        self, audio: np.ndarray[Any, Any], window: dict[str, float], options: TranscribeOptions
    ) -> list[Segment]:
        start = int(window["start"] * self._sample_rate)
        segments, _ = self._model.transcribe(
            audio[start : int(window["end"] * self._sample_rate)],
            **{**self._decoding(options), "word_timestamps": True},
            vad_filter=False,
            condition_on_previous_text=False,
            compression_ratio_threshold=self.thresholds.compression_ratio,
            log_prob_threshold=self.thresholds.log_prob,
            no_speech_threshold=self.thresholds.no_speech,
        )
        offset = start / self._sample_rate
        return [shifted(_convert_segment(0, segment), offset) for segment in segments]

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


def _convert_segment(index: int, segment: Any) -> Segment:
    return Segment(
        id=index,
        seek=segment.seek,
        start=round(segment.start, 3),
        end=round(segment.end, 3),
        text=segment.text,
        tokens=list(segment.tokens),
        temperature=segment.temperature,
        avg_logprob=segment.avg_logprob,
        compression_ratio=segment.compression_ratio,
        no_speech_prob=segment.no_speech_prob,
        words=None
        if segment.words is None
        else [
            Word(
                start=round(w.start, 3),
                end=round(w.end, 3),
                word=w.word,
                probability=w.probability,
            )
            for w in segment.words
        ],
    )
