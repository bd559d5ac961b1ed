"""faster-whisper's WhisperModel, encoding a batch a few decoding windows at a time.

On a CPU the encoder costs the same per window in a batch or alone, but its memory grows with
the batch: its self-attention scores alone are batch x heads x 1500 x 1500 floats, 576 MB a
layer for ``base`` in a batch of 8. Measured on 2 cores, ``base`` int8, the 45 windows of the
40-clip burst decoded in batches of 8: encoding each batch at once peaked at 1059 MB and took
28.6 s; one window at a time, 759 MB and 25.0 s, with the same text. The decoder (beam search,
where batching pays) still takes the whole batch at once. On a GPU the encoder is batched whole.

It also keeps the token probabilities of its alignment pass for ``include[]=logprobs``
(``serve_app.model.token_probs``).
"""

from __future__ import annotations

from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel

from serve_app.model import token_probs


class SubBatchedWhisperModel(WhisperModel):  # type: ignore[misc]
    model: Any  # CTranslate2's Whisper, behind a token_probs.AlignRecorder

    def __init__(self, *args: Any, encode_batch_size: int | None = None, **kwargs: Any) -> None:
        """``encode_batch_size``: windows encoded at once; None: 1 on a CPU, all on a GPU."""
        super().__init__(*args, **kwargs)
        if encode_batch_size is None:
            encode_batch_size = 1 if self.model.device == "cpu" else 0
        self.encode_batch_size: int = encode_batch_size  # 0: the whole batch
        self.model = token_probs.AlignRecorder(self.model)

    def find_alignment(self, *args: Any, **kwargs: Any) -> list[list[dict[str, Any]]]:
        alignments: list[list[dict[str, Any]]] = super().find_alignment(*args, **kwargs)
        token_probs.attach(alignments)
        return alignments

    def add_word_timestamps(
        self, segments: list[Any], tokenizer: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """As faster-whisper's; while a decode records token probabilities (token_probs), the
        words that reached the segments are queued with theirs."""
        ended = super().add_word_timestamps(segments, tokenizer, *args, **kwargs)
        token_probs.queue_words(tokenizer)
        return ended

    def encode(self, features: np.ndarray[Any, Any]) -> ctranslate2.StorageView:
        size = self.encode_batch_size
        encode = super().encode
        if not size or features.ndim == 2 or features.shape[0] <= size:
            return encode(features)
        parts = [np.asarray(encode(features[i : i + size])) for i in range(0, len(features), size)]
        # The StorageView shares the array's memory and holds a reference to it.
        return ctranslate2.StorageView.from_array(np.concatenate(parts))
