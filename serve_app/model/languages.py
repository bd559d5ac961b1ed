"""Which language a request is decoded in: the one it names, checked against the model, or one
detected among the languages it allows. Plain logic."""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.errors import InvalidOptionError
from serve_app.model_options import normalize_language
from serve_app.schemas import TranscribeOptions


def checked_language(model: str, multilingual: bool, options: TranscribeOptions) -> str | None:
    """The request's language (None: detect), refused where the model cannot honour it."""
    language = normalize_language(options.language)
    if multilingual:
        return language
    if options.languages and "en" not in options.languages:
        raise InvalidOptionError(
            f"Model {model} is English-only; languages must include 'en'", param="languages"
        )
    if language not in (None, "en"):
        raise InvalidOptionError(
            f"Model {model} is English-only; it cannot transcribe '{language}'", param="language"
        )
    if options.task == "translate":
        raise InvalidOptionError(
            f"Model {model} is English-only; it cannot translate", param="model"
        )
    return language


def most_likely(ranked: Sequence[tuple[str, float]], allowed: Sequence[str]) -> tuple[str, float]:
    """The allowed language the detector ranks highest, with its probability among the
    allowed ones; the first allowed when the detector gives them none."""
    among = [(code, p) for code, p in ranked if code in allowed]
    total = sum(p for _, p in among)
    if total <= 0:
        return allowed[0], 0.0
    code, probability = max(among, key=lambda pair: pair[1])
    return code, probability / total
