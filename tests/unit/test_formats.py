from __future__ import annotations

import json

from serve_app import formats
from serve_app.schemas import Segment, Transcript, Word


def _segment(i: int, start: float, end: float, text: str, words: list[Word]) -> Segment:
    return Segment(
        id=i,
        seek=0,
        start=start,
        end=end,
        text=text,
        tokens=[1, 2],
        temperature=0.0,
        avg_logprob=-0.2,
        compression_ratio=1.1,
        no_speech_prob=0.01,
        words=words,
    )


TRANSCRIPT = Transcript(
    text="Hello there. General Kenobi!",
    language="en",
    language_probability=0.99,
    duration=3723.5,
    model="tiny.en",
    segments=[
        _segment(
            0, 0.0, 1.5, " Hello there.", [Word(start=0.0, end=0.6, word=" Hello", probability=0.9)]
        ),
        _segment(1, 3661.25, 3723.5, " General Kenobi!", []),
    ],
)


def test_json() -> None:
    assert json.loads(formats.render(TRANSCRIPT, "json")) == {
        "text": TRANSCRIPT.text,
        "usage": {"type": "duration", "seconds": 3723.5},
    }


def test_text() -> None:
    assert formats.render(TRANSCRIPT, "text") == "Hello there. General Kenobi!"


def test_srt() -> None:
    assert formats.render(TRANSCRIPT, "srt") == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n01:01:01,250 --> 01:02:03,500\nGeneral Kenobi!\n"
    )


def test_vtt() -> None:
    assert formats.render(TRANSCRIPT, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "01:01:01.250 --> 01:02:03.500\nGeneral Kenobi!\n"
    )


def test_verbose_json_words_only_when_asked() -> None:
    plain = json.loads(formats.render(TRANSCRIPT, "verbose_json"))
    assert plain["language"] == "en" and plain["duration"] == 3723.5
    assert plain["usage"] == {"type": "duration", "seconds": 3723.5}
    assert "words" not in plain
    assert all("words" not in s for s in plain["segments"])
    assert {"id", "start", "end", "text", "avg_logprob", "no_speech_prob"} <= set(
        plain["segments"][0]
    )
    with_words = json.loads(formats.render(TRANSCRIPT, "verbose_json", words=True))
    assert with_words["words"] == [{"start": 0.0, "end": 0.6, "word": " Hello", "probability": 0.9}]
