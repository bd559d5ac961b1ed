"""Cutting window-sized segments into sentences at word timestamps (pure logic)."""

from __future__ import annotations

from serve_app.model.segments import split_segments
from serve_app.schemas import Segment, Word


def _segment(*words: tuple[str, float, float]) -> Segment:
    listed = [Word(word=w, start=s, end=e, probability=0.9) for w, s, e in words]
    return Segment(
        id=7,
        seek=0,
        start=listed[0].start,
        end=listed[-1].end,
        text="".join(w.word for w in listed),
        tokens=[1, 2, 3],
        temperature=0.0,
        avg_logprob=-0.2,
        compression_ratio=1.4,
        no_speech_prob=0.01,
        words=listed,
    )


def _spans(segments: list[Segment]) -> list[tuple[float, float, str]]:
    return [(s.start, s.end, s.text) for s in segments]


def test_a_window_is_cut_where_its_sentences_end() -> None:
    window = _segment(
        (" Hello", 0.0, 0.4), (" there.", 0.5, 1.0), (" How", 1.6, 1.8), (" are", 1.9, 2.0),
        (" you?", 2.1, 2.5), (" Fine", 3.0, 3.4),
    )  # fmt: skip
    parts = split_segments([window], max_s=10, keep_words=False)
    assert _spans(parts) == [
        (0.0, 1.0, " Hello there."),
        (1.6, 2.5, " How are you?"),
        (3.0, 3.4, " Fine"),
    ]
    assert [p.id for p in parts] == [0, 1, 2] and all(p.words is None for p in parts)
    assert all(p.avg_logprob == -0.2 and p.tokens == [] for p in parts)
    assert "".join(p.text for p in parts) == window.text  # nothing lost or added


def test_a_long_sentence_is_cut_at_its_longest_pauses_a_comma_counting_double() -> None:
    words = [(f" w{i}", i * 1.0, i * 1.0 + 0.8) for i in range(24)]
    words[7] = (" w7,", 7.0, 7.8)  # a comma, with the usual 0.2 s pause after it
    words[16] = (" w16", 16.0, 16.2)  # a longer pause, but no comma: 0.8 s
    parts = split_segments([_segment(*words)], max_s=10, keep_words=True)
    assert all(p.end - p.start <= 10 for p in parts)
    assert parts[0].text.endswith(" w7,")  # 0.2 s after a comma beats 0.2 s without
    assert [w.word for p in parts for w in p.words or []] == [w for w, _, _ in words]


def test_short_segments_and_segments_without_words_stay_as_they_are() -> None:
    short = _segment((" One", 0.0, 0.5), (" two", 0.6, 1.0))
    bare = short.model_copy(update={"words": None, "id": 3})
    parts = split_segments([short, bare], max_s=10, keep_words=True)
    assert _spans(parts) == [(0.0, 1.0, " One two"), (0.0, 1.0, " One two")]
    assert parts[0].tokens == [1, 2, 3] and [p.id for p in parts] == [0, 1]
