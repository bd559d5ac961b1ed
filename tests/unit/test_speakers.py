"""Speakers merged into a transcript by time, and their formats: pure logic."""

from __future__ import annotations

import json

from ingest import contract as c
from serve_app import formats
from serve_app.schemas import QueuedTranscriptionRequest, Segment, Transcript, Word
from serve_app.transcription.speakers import Turn, assign_speakers, speaker_count


def _word(start: float, end: float, text: str) -> Word:
    return Word(start=start, end=end, word=text, probability=0.9)


def _segment(i: int, words: list[Word] | None, start: float = 0, end: float = 0) -> Segment:
    return Segment(
        id=i,
        seek=0,
        start=words[0].start if words else start,
        end=words[-1].end if words else end,
        text="".join(w.word for w in words) if words else " hm",
        tokens=[1, 2],
        temperature=0,
        avg_logprob=-0.2,
        compression_ratio=1.2,
        no_speech_prob=0.1,
        words=words,
    )


def _transcript(*segments: Segment) -> Transcript:
    return Transcript(
        text="".join(s.text for s in segments).strip(),
        language="en",
        language_probability=1,
        duration=20,
        segments=list(segments),
        model="m",
    )


TURNS = [Turn(0.0, 4.0, "SPEAKER_02"), Turn(4.2, 9.0, "SPEAKER_01"), Turn(9.5, 12.0, "SPEAKER_02")]


def test_a_segment_is_cut_where_its_words_change_speaker() -> None:
    words = [
        _word(0.5, 1, " Hello"),
        _word(1, 1.5, " there."),
        _word(4.5, 5, " Hi"),
        _word(5, 5.5, " back."),
    ]
    merged = assign_speakers(_transcript(_segment(0, words)), TURNS)
    assert [(s.speaker, s.text, s.start, s.end) for s in merged.segments] == [
        ("A", " Hello there.", 0.5, 1.5),  # named in order of speaking: SPEAKER_02 first
        ("B", " Hi back.", 4.5, 5.5),
    ]
    assert [w.speaker for s in merged.segments for w in s.words or []] == ["A", "A", "B", "B"]
    assert [s.id for s in merged.segments] == [0, 1] and merged.segments[0].tokens == []
    assert merged.text == "Hello there. Hi back." and speaker_count(merged) == 2


def test_words_in_a_gap_go_to_the_nearest_turn_and_far_ones_to_nobody() -> None:
    words = [_word(9.1, 9.3, " so"), _word(15.0, 15.5, " far")]
    merged = assign_speakers(_transcript(_segment(0, words)), TURNS)
    assert [(s.speaker, s.text) for s in merged.segments] == [("A", " so"), (None, " far")]


def test_a_segment_without_words_takes_the_turn_overlapping_it_most() -> None:
    merged = assign_speakers(_transcript(_segment(0, None, 3.0, 8.0)), TURNS)
    assert merged.segments[0].speaker == "A"  # SPEAKER_01 overlaps it most, and speaks first here


def test_no_turns_leaves_speakers_unknown() -> None:
    merged = assign_speakers(_transcript(_segment(0, [_word(0, 1, " x")])), [])
    assert merged.segments[0].speaker is None and speaker_count(merged) == 0


def test_formats_carry_the_speaker() -> None:
    words = [_word(0.5, 1, " Hello"), _word(4.5, 5, " Hi")]
    merged = assign_speakers(_transcript(_segment(0, words)), TURNS)
    srt = formats.render(merged, "srt")
    assert "[A] Hello" in srt and "[B] Hi" in srt
    vtt = formats.render(merged, "vtt")
    assert "<v A>Hello" in vtt and "<v B>Hi" in vtt
    diarized = json.loads(formats.render(merged, "diarized_json"))
    assert diarized["task"] == "transcribe" and diarized["usage"]["type"] == "duration"
    assert [(s["type"], s["id"], s["speaker"], s["text"]) for s in diarized["segments"]] == [
        ("transcript.text.segment", "seg_000", "A", "Hello"),
        ("transcript.text.segment", "seg_001", "B", "Hi"),
    ]
    verbose = json.loads(formats.render(merged, "verbose_json", words=True))
    assert [w["speaker"] for w in verbose["words"]] == ["A", "B"]
    plain = formats.render(_transcript(_segment(0, words)), "verbose_json")
    assert "speaker" not in plain  # without diarization nothing changes


def test_amqp_results_gain_speakers_only_when_diarized() -> None:
    request = QueuedTranscriptionRequest(attachment_id=7, audio_file_path="/a.wav")
    words = [_word(0.5, 1, " Hello"), _word(4.5, 5, " Hi")]
    plain = json.loads(c.success_result(request, _transcript(_segment(0, words))).to_json())
    assert all("speaker" not in s for s in plain["segments"])
    merged = assign_speakers(_transcript(_segment(0, words)), TURNS)
    diarized = json.loads(c.success_result(request, merged).to_json())
    assert [s["speaker"] for s in diarized["segments"]] == ["A", "B"]
    assert set(diarized) == set(plain)  # no other field appears or goes
