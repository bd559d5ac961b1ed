"""A window that failed the quality checks (``quality.guard``) decoded again, sequentially, with
the thresholds the batched pipeline does not apply."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from serve_app.model import token_probs
from serve_app.model.quality import Thresholds
from serve_app.model.segments import from_faster_whisper, shifted
from serve_app.schemas import Segment

if TYPE_CHECKING:
    from faster_whisper import WhisperModel


def redecode(
    model: WhisperModel,
    clip: np.ndarray[Any, Any],
    offset_s: float,
    decoding: dict[str, Any],
    thresholds: Thresholds,
    sampled: bool,
    logprobs: bool,
) -> list[Segment]:
    """Blocking: ``clip`` (at ``offset_s`` in its file) decoded with ``decoding`` (the
    request's options), its segments on the file's clock, with words.

    Not sampled (temperature 0, the default): deterministically, with timestamp tokens and no
    repeated 3-gram (what breaks the loops the check catches) instead of sampling at rising
    temperatures. CTranslate2 samples from one random state per worker thread that no call can
    seed, so a sampled redo of the same window gave another text depending on which requests
    the replica had served before (an audit's reversed speech: "I'm gonna see you later..."
    alone, "I'm going to see you later on" in a mix). A request that asks for a temperature
    gets OpenAI's sampled fallback."""
    deterministic: dict[str, Any] = (
        {} if sampled else {"temperature": (0.0,), "no_repeat_ngram_size": 3}
    )
    recorder = token_probs.Recorder() if logprobs else None
    with token_probs.recording(recorder):  # the model decodes as its segments are read
        segments, _ = model.transcribe(
            clip,
            **{**decoding, "word_timestamps": True, **deterministic},
            vad_filter=False,
            condition_on_previous_text=False,
            compression_ratio_threshold=thresholds.compression_ratio,
            log_prob_threshold=thresholds.log_prob,
            no_speech_threshold=thresholds.no_speech,
        )
        return [shifted(from_faster_whisper(0, s, recorder), offset_s) for s in segments]
