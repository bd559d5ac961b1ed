"""Token log probabilities of decoded words (``include[]=logprobs``), kept from faster-whisper's
alignment pass.

faster-whisper computes each text token's probability when it aligns words to the audio (the
pass behind word timestamps), averages them per word and drops them. The model
(``whisper_model``) keeps them while a decode records: the tokens of each aligned word carry
their probability through faster-whisper's punctuation merging, and each word that reaches a
segment is queued into the decode's ``Recorder``, in the order the segments come out.
``Recorder.take`` hands a segment's words theirs, checking that the queued words are that
segment's; a mismatch gives no probabilities rather than another word's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

from serve_app.schemas import TokenLogprob

logger = logging.getLogger(__name__)

_local = threading.local()


class ProbToken(int):
    """A token id that carries its probability through faster-whisper's list handling."""

    prob: float

    def __new__(cls, token: int, prob: float) -> ProbToken:
        made = super().__new__(cls, token)
        made.prob = prob
        return made


class AlignRecorder:
    """The CTranslate2 model with its alignment results kept for the thread that asked, while
    that thread records; everything else passes through."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def align(self, *args: Any, **kwargs: Any) -> Any:
        results = self._model.align(*args, **kwargs)
        if recording_here():
            _local.aligned = results
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class Recorder:
    """The words of one decode, with their tokens' log probabilities, in the order its
    segments come out."""

    def __init__(self) -> None:
        self._queue: deque[tuple[str, list[TokenLogprob] | None]] = deque()

    def put(self, word: str, logprobs: list[TokenLogprob] | None) -> None:
        self._queue.append((word, logprobs))

    def take(self, words: Sequence[Any] | None) -> list[list[TokenLogprob] | None]:
        """The token log probabilities of a segment's words, each None where unknown."""
        if not words:
            return []
        if len(self._queue) < len(words):
            return self._unmatched(words)
        queued = [self._queue.popleft() for _ in words]
        if [text for text, _ in queued] != [w.word for w in words]:
            return self._unmatched(words)
        return [logprobs for _, logprobs in queued]

    def _unmatched(self, words: Sequence[Any]) -> list[list[TokenLogprob] | None]:
        logger.warning("Token probabilities did not match the decoded words; left out")
        self._queue.clear()
        return [None] * len(words)


@contextlib.contextmanager
def recording(recorder: Recorder | None) -> Iterator[None]:
    """Record into ``recorder`` what the model aligns inside the block, on this thread (a
    decode call runs on one thread; a generator's steps may each run on another, so each step
    is a block of its own). None: record nothing."""
    _local.recorder = recorder
    _local.aligned = _local.alignments = None
    try:
        yield
    finally:
        _local.recorder = _local.aligned = _local.alignments = None


def recording_here() -> bool:
    return getattr(_local, "recorder", None) is not None


def attach(alignments: list[list[dict[str, Any]]]) -> None:
    """Give each aligned word's tokens their probabilities from the alignment just run (called
    by the model's find_alignment with what it returns); kept for ``queue_words``."""
    aligned, _local.aligned = getattr(_local, "aligned", None), None
    if aligned is None or not recording_here():
        return
    _local.alignments = alignments
    for timings, result in zip(alignments, aligned, strict=False):
        probs = result.text_token_probs
        if len(probs) < sum(len(timing["tokens"]) for timing in timings):
            continue  # not this alignment's: its words go without
        offset = 0
        for timing in timings:
            tokens = timing["tokens"]
            timing["tokens"] = [
                ProbToken(token, probs[offset + i]) for i, token in enumerate(tokens)
            ]
            offset += len(tokens)


def queue_words(tokenizer: Any) -> None:
    """Queue the words of the alignment ``attach`` kept that reached segments (after
    faster-whisper merged punctuation into them), in order (called by the model's
    add_word_timestamps once it is done)."""
    alignments, _local.alignments = getattr(_local, "alignments", None), None
    if alignments is None or not recording_here():
        return
    recorder: Recorder = _local.recorder
    for timings in alignments:
        for timing in timings:
            if timing["word"]:
                tokens = timing["tokens"]
                known = all(isinstance(t, ProbToken) for t in tokens)
                logprobs = [_logprob(tokenizer, t) for t in tokens] if known else None
                recorder.put(timing["word"], logprobs)


def _logprob(tokenizer: Any, token: ProbToken) -> TokenLogprob:
    raw = token_bytes(tokenizer, int(token))
    return TokenLogprob(
        token=raw.decode("utf-8", errors="replace"),
        logprob=round(math.log(max(float(token.prob), 1e-12)), 6),
        bytes=list(raw),
    )


def token_bytes(tokenizer: Any, token: int) -> bytes:
    """A token's bytes: Whisper's BPE works on bytes, and a token may hold part of a
    character (OpenAI's ``bytes`` field exists for this)."""
    piece = tokenizer.tokenizer.id_to_token(token)
    if piece is None:
        return b""
    table = _byte_decoder()
    return bytes(table[ch] for ch in piece if ch in table)


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: how byte-level BPE spells bytes as text."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}
