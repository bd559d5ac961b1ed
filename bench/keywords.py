"""Keywords (faster-whisper's hotwords): a rare term's recall with and without them.

    .venv/bin/python -m bench.keywords [--models tiny.en base]

Input: tests/fixtures/keywords.json, sentences each holding one rare term (names, brands, drug
names), spoken by espeak-ng. Each sentence is transcribed in process by the service's core
(``Transcriber``, the windows path every request takes) three ways:
- no keywords;
- its own term as the only keyword;
- the whole vocabulary (every term of the file) as keywords: what a client would send.
Prints per model and way: how many terms came out spelled right (recall), how many terms of the
vocabulary appeared in a sentence that did not hold them (false insertions), the word error rate
of the sentences, and the decoding time against no keywords.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from serve_app.media import audio
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import TranscribeOptions
from serve_app.settings import Settings
from tests.support import speech

FIXTURE = speech.FIXTURES / "keywords.json"


def load() -> list[tuple[str, str]]:
    return [(item["term"], item["sentence"]) for item in json.loads(FIXTURE.read_text())]


def clips(items: list[tuple[str, str]], out_dir: Path) -> list[audio.AudioArray]:
    limits = audio.AudioLimits(max_bytes=10 << 20, max_duration_s=60)
    decoded = []
    for term, sentence in items:
        wav = speech.speak(sentence, "en-us", out_dir / f"{term}.wav")
        with open(wav, "rb") as f:
            decoded.append(audio.decode(f, limits).samples)
    return decoded


def run(model: str, items: list[tuple[str, str]], samples: list[audio.AudioArray]) -> None:
    transcriber = Transcriber.load(model, Settings(whisper_model=model))
    vocabulary = [term for term, _ in items]
    ways: dict[str, list[list[str] | None]] = {
        "none": [None] * len(items),
        "own term": [[term] for term, _ in items],
        "vocabulary": [vocabulary] * len(items),
    }
    base_time = 0.0
    print(f"\n{model}: {len(items)} sentences")
    print(f"{'keywords':12} {'recall':>8} {'false ins.':>10} {'WER':>6} {'time':>7}")
    for way, keyword_lists in ways.items():
        texts = []
        started = time.perf_counter()
        for clip, keywords in zip(samples, keyword_lists, strict=True):
            windows = transcriber.speech_windows(clip)
            options = TranscribeOptions(language="en", keywords=keywords)
            texts.append(transcriber.transcribe_windows(clip, windows, options).text)
        took = time.perf_counter() - started
        base_time = base_time or took
        said = list(zip(vocabulary, texts, strict=True))
        hits = sum(term.lower() in text.lower() for term, text in said)
        inserted = sum(
            other.lower() in text.lower()
            for term, text in said
            for other in vocabulary
            if other != term
        )
        error = speech.word_error_rate(" ".join(s for _, s in items), " ".join(texts))
        print(
            f"{way:12} {hits:>4}/{len(items):<3} {inserted:>10} {error:>6.3f} "
            f"{took / base_time:>6.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    args = parser.parse_args()
    items = load()
    with tempfile.TemporaryDirectory() as tmp:
        samples = clips(items, Path(tmp))
        for model in args.models:
            run(model, items, samples)


if __name__ == "__main__":
    main()
