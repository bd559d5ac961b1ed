"""What a request may ask of a model, checked before any audio is decoded: which model, which
language, which temperatures, whether speakers; and how a model is loaded on a device. Plain
logic."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from faster_whisper.tokenizer import _LANGUAGE_CODES
from pydantic import ValidationError

from serve_app.errors import InvalidOptionError, ModelNotServedError, validation_problems
from serve_app.schemas import MAX_KEYWORD_CHARS, MAX_KEYWORDS, MAX_LANGUAGES, ServerVad
from serve_app.settings import Settings
from serve_app.transcription.diarizer import not_installed

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


def has_control_characters(text: str) -> bool:
    """Text that is stored and shown (file names, keywords, speaker names) holds none."""
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def check_keywords(values: Sequence[str] | None) -> list[str] | None:
    """Keywords with their spacing normalized, each once, in order; bounded."""
    if not values:
        return None
    found: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise InvalidOptionError("keywords must be strings", param="keywords")
        term = " ".join(value.split())
        if has_control_characters(term):
            raise InvalidOptionError("A keyword contains control characters", param="keywords")
        if len(term) > MAX_KEYWORD_CHARS:
            raise InvalidOptionError(
                f"A keyword is longer than {MAX_KEYWORD_CHARS} characters", param="keywords"
            )
        if term and term not in found:
            found.append(term)
    if len(found) > MAX_KEYWORDS:
        raise InvalidOptionError(f"At most {MAX_KEYWORDS} keywords", param="keywords")
    return found or None


def check_languages(values: Sequence[str] | None, language: str | None) -> list[str] | None:
    """The languages detection may choose from, as codes, each once; None: any."""
    if not values:
        return None
    if language is not None:
        raise InvalidOptionError(
            "Give either language or languages: languages limits detection", param="languages"
        )
    codes: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise InvalidOptionError("languages must be strings", param="languages")
        try:
            code = normalize_language(value)
        except InvalidOptionError as exc:
            raise InvalidOptionError(exc.message, param="languages") from None
        if code is not None and code not in codes:
            codes.append(code)
    if len(codes) > MAX_LANGUAGES:
        raise InvalidOptionError(f"At most {MAX_LANGUAGES} languages", param="languages")
    return codes or None


def chunking_strategy(value: object) -> ServerVad | None:
    """OpenAI's chunking_strategy: "auto" (the service's VAD settings), a server_vad object,
    or that object as a JSON string (a form field); None when the service's settings apply."""
    if value is None or value == "" or value == "auto":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidOptionError(
                'chunking_strategy must be "auto" or a server_vad object',
                param="chunking_strategy",
            ) from None
        if value == "auto":
            return None
    if not isinstance(value, dict) or value.get("type") != "server_vad":
        raise InvalidOptionError(
            'chunking_strategy must be "auto" or an object of type "server_vad"',
            param="chunking_strategy",
        )
    try:
        return ServerVad.model_validate(value)
    except ValidationError as exc:
        raise InvalidOptionError(
            f"chunking_strategy: {validation_problems(exc)}", param="chunking_strategy"
        ) from None


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


def num_workers(settings: Settings, device: str) -> int:
    # Two batches at once on a CPU: CTranslate2 keeps 2 threads only 1.5-1.7 cores busy (the
    # 8-minute file, 2 cores: 15-16.5 s with one batch of 2 threads at a time, 13.2 s with two
    # of 2 threads, 12.0 s with two of 1 thread). A lone request still gets every thread.
    return settings.whisper_num_workers or (2 if device == "cpu" else 1)


def speaker_options(
    diarize: bool, min_speakers: int | None, max_speakers: int | None, installed: bool
) -> dict[str, Any]:
    """Diarization fields of TranscribeOptions, checked: bounds only with diarize, in order,
    and only on a service that has the extra installed."""
    if not diarize:
        if min_speakers is not None or max_speakers is not None:
            raise InvalidOptionError("min_speakers and max_speakers need diarize=true")
        return {}
    if not installed:
        raise not_installed()
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise InvalidOptionError("min_speakers is more than max_speakers", param="min_speakers")
    return {"diarize": True, "min_speakers": min_speakers, "max_speakers": max_speakers}
