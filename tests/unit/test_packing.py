"""Packing short windows into shared decoding windows: placement and taking words back (pure
logic), and with the real model, clips of different files packed together."""

from __future__ import annotations

from pathlib import Path

from serve_app.media import audio
from serve_app.model.packing import Placed, covers, plan_packs, unpack
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import Segment, TranscribeOptions, Word
from tests.support import speech

SR = 16000


def test_windows_fill_packs_in_order_a_gap_apart() -> None:
    placed = plan_packs([5 * SR, 10 * SR, 12 * SR, 29 * SR, 3 * SR], 30 * SR, SR)
    assert placed == [
        Placed(0, 0, 5 * SR),
        Placed(0, 6 * SR, 16 * SR),
        Placed(0, 17 * SR, 29 * SR),
        Placed(1, 0, 29 * SR),  # a long window gets a pack of its own
        Placed(2, 0, 3 * SR),
    ]


def test_longest_windows_are_placed_first_so_fewer_packs_are_needed() -> None:
    # In arrival order these take three packs: [20], [20, 9], [9].
    placed = plan_packs([20 * SR, 20 * SR, 9 * SR, 9 * SR], 30 * SR, SR)
    assert placed == [
        Placed(0, 0, 20 * SR),
        Placed(1, 0, 20 * SR),
        Placed(0, 21 * SR, 30 * SR),  # fits exactly: 20 + 1 + 9
        Placed(1, 21 * SR, 30 * SR),
    ]


def test_windows_keep_their_order_inside_a_pack() -> None:
    placed = plan_packs([4 * SR, 25 * SR, 3 * SR], 30 * SR, SR)
    # The 25 s window is placed first and the 4 s one joins it (25 + 1 + 4), but the 4 s one
    # came first, so it is first in the pack; 3 s no longer fits.
    assert placed == [Placed(0, 0, 4 * SR), Placed(0, 5 * SR, 30 * SR), Placed(1, 0, 3 * SR)]


def _word(start: float, end: float, text: str) -> Word:
    return Word(start=start, end=end, word=text, probability=0.9)


def test_words_go_back_to_their_window_on_its_own_clock() -> None:
    words = [
        _word(0.2, 0.6, " Hello"),
        _word(0.6, 1.1, " there."),
        _word(2.6, 3.0, " Second"),  # a word that starts in the gap still belongs to it
        _word(3.0, 3.8, " clip."),
    ]
    pack = Segment(
        id=0,
        seek=0,
        start=0.2,
        end=3.8,
        text=" Hello there. Second clip.",
        tokens=[1, 2, 3],
        temperature=0.0,
        avg_logprob=-0.2,
        compression_ratio=1.1,
        no_speech_prob=0.01,
        words=words,
    )
    windows = [Placed(0, 0, int(1.5 * SR)), Placed(0, int(2.5 * SR), int(4 * SR))]
    first, second = unpack([pack], windows, SR, SR)
    assert [s.text for s in first] == [" Hello there."]
    assert [s.text for s in second] == [" Second clip."]
    assert (second[0].start, second[0].end) == (0.1, 1.3)
    assert [w.start for w in second[0].words or []] == [0.1, 0.5]
    assert second[0].tokens == [] and second[0].avg_logprob == -0.2


def test_short_windows_of_one_request_packed_together_keep_their_own_words(
    tiny: Transcriber, speech_dir: Path
) -> None:
    """A short window packed before a longer one (here one request's four windows): without
    timestamp tokens the model stopped at the pause after the first and the second lost every
    word; such windows are decoded again alone."""
    texts = [
        "Thank you all for your hard work.",
        speech.reference("en_office"),
        "The green parrots sat on the old fence.",
        "Please call the office before noon tomorrow.",
    ]
    clips = []
    for i, text in enumerate(texts):
        wav = speech.speak(text, "en-us", speech_dir / f"pack{i}.wav")
        with open(wav, "rb") as f:
            samples = audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples
        clips.append((samples, tiny.speech_windows(samples)))
    slices = [s for samples, windows in clips for s in tiny.slices(samples, windows)]
    assert len(slices) == len(texts)
    packs = plan_packs([len(s) for s in slices], 30 * SR, SR)
    assert max(p.pack for p in packs) < len(slices) - 1  # some were packed together
    key = tiny.decoding_key(TranscribeOptions(), "en")
    decoded = tiny.decode_windows(key, slices)
    for text, (samples, windows), found in zip(texts, clips, decoded, strict=True):
        transcript = tiny.assemble(samples, windows, [found], TranscribeOptions(), "en", 1.0)
        # tiny.en at times hears espeak's "brown fox" as "roundfuck" (WER 0.24 on en_office
        # here); a window that lost its words or took a neighbour's is far off in length.
        assert speech.word_error_rate(text, transcript.text) <= 0.3, (text, transcript.text)
        assert 0.8 <= len(transcript.text.split()) / len(text.split()) <= 1.2
        assert transcript.segments[-1].end <= len(samples) / SR + 0.3


def _segment(*words: Word) -> Segment:
    return Segment(
        id=0,
        seek=0,
        start=words[0].start if words else 0.0,
        end=words[-1].end if words else 0.0,
        text="".join(w.word for w in words),
        tokens=[],
        temperature=0.0,
        avg_logprob=-0.2,
        compression_ratio=1.1,
        no_speech_prob=0.01,
        words=list(words),
    )


def test_a_packed_window_must_get_words_at_both_ends() -> None:
    whole = _segment(_word(0.5, 1.0, " Readers"), _word(5.0, 5.6, " application."))
    assert covers([whole], 6.0)
    assert not covers([], 6.0)
    # The model ended the pack early: one stray word at the start of a 6 s window.
    assert not covers([_segment(_word(0.4, 0.7, " which"))], 6.0)
    # ... or it skipped the window's start.
    assert not covers([_segment(_word(4.0, 4.5, " mobile"), _word(5.0, 5.6, " app."))], 6.0)
    # A short window: one word is all it holds.
    assert covers([_segment(_word(0.4, 0.9, " Yes."))], 1.3)
