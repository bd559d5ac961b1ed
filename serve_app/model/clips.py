"""Decoding windows (clips of at most 30 s) decoded in batches by faster-whisper's batched
pipeline, each apart from the others: they are laid in one array, each a clip of its own
(``clip_timestamps``), so the pipeline decodes them with no previous text, as one call per
clip would. Which clips share a call never changes what any one of them decodes to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from serve_app.model import token_probs
from serve_app.model.segments import from_faster_whisper, shifted
from serve_app.schemas import Segment

if TYPE_CHECKING:
    from faster_whisper import BatchedInferencePipeline

# Silence before each clip, never decoded: faster-whisper moves a clip's first word by how long
# ago the previous clip of the call ended (its last_speech_timestamp), up to 4 x 0.7 s. With
# more than that before every clip, even the first, a clip's words never depend on the clips
# before it.
_LEAD_S = 3.0


def decode_clips(
    pipeline: BatchedInferencePipeline,
    clips: list[np.ndarray[Any, Any]],
    sample_rate: int,
    logprobs: bool = False,
    **decoding: Any,
) -> list[list[Segment]]:
    """Blocking: each clip's segments on its own clock; ``decoding``: the pipeline's options
    (language, task, prompt, beam, words, batch size); ``logprobs``: words with their tokens'
    log probabilities (needs words)."""
    if not clips:
        return []
    lead = int(_LEAD_S * sample_rate)
    offsets = lead + np.cumsum([0] + [len(c) + lead for c in clips[:-1]])
    timestamps = [
        {"start": int(o) / sample_rate, "end": (int(o) + len(c)) / sample_rate}
        for o, c in zip(offsets, clips, strict=True)
    ]
    laid = np.zeros(int(offsets[-1]) + len(clips[-1]), np.float32)
    for o, c in zip(offsets, clips, strict=True):
        laid[int(o) : int(o) + len(c)] = c
    segments, _ = pipeline.transcribe(
        laid,
        # Not with timestamp tokens: the batched pipeline drops what follows a window's last
        # timestamp (sequential decoding decodes it again in the next window), which cost 6
        # points of WER on the 8-minute file. Packs are checked instead (packing.settle).
        without_timestamps=True,
        clip_timestamps=timestamps,
        **decoding,
    )
    # The pipeline puts a clip at its start rounded down to a sample and names its segments'
    # clip by their seek (that start in frames): both computed here its way.
    starts = [int(t["start"] * sample_rate) / sample_rate for t in timestamps]
    fps = pipeline.model.frames_per_second
    index = {int(start * fps): i for i, start in enumerate(starts)}
    decoded: list[list[Segment]] = [[] for _ in clips]
    recorder = token_probs.Recorder() if logprobs else None
    with token_probs.recording(recorder):  # the pipeline decodes as it is iterated
        for segment in segments:
            i = index[segment.seek]
            decoded[i].append(shifted(from_faster_whisper(0, segment, recorder), -starts[i]))
    return decoded
