"""include[]=logprobs with the real model (tiny.en): every token of the text with the log
probability faster-whisper's alignment gave it, on each decoding path; and the bookkeeping that
keeps one decode's probabilities off another's words."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from serve_app import formats
from serve_app.media import audio
from serve_app.model import token_probs
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import TokenLogprob, TranscribeOptions, Transcript

LIMITS = audio.AudioLimits(max_bytes=10 << 20, max_duration_s=120)
PUNCTUATION = set("\"'.,!?:;-()[]{}")  # what faster-whisper merges, in English


def _decode(path: Path) -> audio.AudioArray:
    with open(path, "rb") as f:
        return audio.decode(f, LIMITS).samples


def _check(result: Transcript) -> None:
    words = result.words
    assert len(words) > 20 and all(w.logprobs for w in words)
    for word in words:
        tokens = word.logprobs or []
        assert "".join(t.token for t in tokens) == word.word
        assert all(t.logprob <= 0 and bytes(t.bytes).decode() == t.token for t in tokens)
        # faster-whisper's word probability is the mean of its tokens' probabilities, taken
        # before punctuation tokens are merged into the word.
        core = [t for t in tokens if not set(t.token.strip()) <= PUNCTUATION] or tokens
        mean = sum(math.exp(t.logprob) for t in core) / len(core)
        assert mean == pytest.approx(word.probability, abs=1e-4), word
    rendered = formats.token_logprobs(result.segments)
    assert "".join(t["token"] for t in rendered).strip() == result.text


def test_every_path_gives_each_token_its_logprob(tiny: Transcriber, clip) -> None:  # type: ignore[no-untyped-def]
    samples = _decode(clip("en_office", ".mp3"))
    options = TranscribeOptions(logprobs=True)
    windows = tiny.speech_windows(samples)
    batched = tiny.transcribe_windows(samples, windows, options)
    sequential = tiny.transcribe(samples, options)  # the streamed path
    _check(batched)
    _check(sequential)
    # Asked for logprobs alone, the request gets no word list in its segments' place.
    plain = tiny.transcribe_windows(samples, windows, TranscribeOptions())
    assert all(s.words is None for s in plain.segments) and plain.text == batched.text


async def test_a_batch_neighbour_without_logprobs_gets_none(tiny: Transcriber, clip) -> None:  # type: ignore[no-untyped-def]
    office = _decode(clip("en_office", ".mp3"))
    thirty = _decode(clip("en_thirty", ".mp3"))

    async def run(samples: audio.AudioArray, options: TranscribeOptions) -> Transcript:
        windows = await asyncio.to_thread(tiny.speech_windows, samples)
        return await tiny.transcribe_batched(samples, windows, options)

    mine, theirs = await asyncio.gather(
        run(office, TranscribeOptions(logprobs=True)),
        run(thirty, TranscribeOptions(word_timestamps=True)),
    )
    _check(mine)
    assert theirs.words and all(w.logprobs is None for w in theirs.words)


def test_token_bytes_keep_characters_split_across_tokens(tiny: Transcriber) -> None:
    tokenizer = SimpleNamespace(tokenizer=tiny._model.hf_tokenizer)
    text = " señora Zyntrovia 東京"
    ids = tiny._model.hf_tokenizer.encode(text, add_special_tokens=False).ids
    pieces = [token_probs.token_bytes(tokenizer, token) for token in ids]
    assert b"".join(pieces) == text.encode()
    assert any(not _whole_utf8(piece) for piece in pieces)  # a character split between tokens


def _whole_utf8(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_a_recorder_hands_out_only_matching_words() -> None:
    recorder = token_probs.Recorder()
    hello = [TokenLogprob(token=" Hello", logprob=-0.1, bytes=list(b" Hello"))]
    recorder.put(" Hello", hello)
    recorder.put(" there", None)
    words = [SimpleNamespace(word=" Hello"), SimpleNamespace(word=" there")]
    assert recorder.take(words) == [hello, None]
    recorder.put(" Goodbye", hello)
    assert recorder.take([SimpleNamespace(word=" Hello")]) == [None]  # not this segment's
    assert recorder.take([SimpleNamespace(word=" Goodbye")]) == [None]  # cleared
