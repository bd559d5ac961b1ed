"""The plain parts of live sessions: input formats, speech probabilities in pieces, turn edges,
the agreement policy, early decodes and session settings."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_app.media.audio import AudioArray
from serve_app.realtime.agreement import Agreement, TimedWord, join
from serve_app.realtime.buffer import LiveBuffer
from serve_app.realtime.decoder import Turn, TurnDecoder
from serve_app.realtime.pacing import LivePacing
from serve_app.realtime.pcm import LiveAudio, _alaw_table, _ulaw_table
from serve_app.realtime.protocol import ProtocolError, SessionConfig
from serve_app.realtime.turns import WINDOW, ServerVad, SpeechStream, TurnDetector, silero
from serve_app.schemas import Segment, TranscribeOptions, Transcript, Word
from tests.support.speech import synthesize

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the standard library's G.711, gone in 3.13: a reference while it lasts


def test_g711_tables_match_the_standard_library() -> None:
    every_byte = bytes(range(256))
    assert (_ulaw_table() == np.frombuffer(audioop.ulaw2lin(every_byte, 2), "<i2")).all()
    assert (_alaw_table() == np.frombuffer(audioop.alaw2lin(every_byte, 2), "<i2")).all()


@pytest.mark.parametrize("audio_format", ["audio/pcm", "audio/pcmu", "audio/pcma"])
def test_audio_sent_in_odd_pieces_resamples_to_the_same_samples(audio_format: str) -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, size=24000, dtype=np.uint8).tobytes()
    whole = LiveAudio(audio_format).push(data)
    pieces, live = [], LiveAudio(audio_format)
    for cut in range(0, len(data), 997):  # odd sizes: PCM16 samples split across appends
        pieces.append(live.push(data[cut : cut + 997]))
    joined = np.concatenate(pieces)
    assert abs(len(joined) - len(whole)) <= 32
    common = min(len(joined), len(whole))
    assert np.allclose(joined[:common], whole[:common], atol=1e-6)
    seconds = len(data) / live.bytes_per_second()
    assert len(whole) == pytest.approx(seconds * 16000, abs=64)


def test_speech_probabilities_in_pieces_match_the_whole_file(tmp_path: Path) -> None:
    from faster_whisper.audio import decode_audio

    audio = decode_audio(str(synthesize("en_office", tmp_path)), sampling_rate=16000)
    audio = audio[: len(audio) // WINDOW * WINDOW]
    model = silero()
    whole, _ = model(audio, None)
    stream = SpeechStream(model)
    pieces = [stream.push(audio[cut : cut + 1600]) for cut in range(0, len(audio), 1600)]
    assert np.allclose(np.concatenate(pieces), whole, atol=1e-5)
    assert whole.max() > 0.9 and whole[-3:].max() < 0.5  # speech found, and silence after it


def test_turn_edges_follow_threshold_padding_and_silence() -> None:
    vad = ServerVad(threshold=0.5, prefix_padding_ms=64, silence_duration_ms=96)  # 2 and 3 windows
    detector = TurnDetector(vad)
    quiet, loud, trailing = [0.1] * 10, [0.9] * 5, [0.4] * 2  # 0.4: under 0.5, over 0.35
    edges = detector.feed(np.array(quiet + loud + trailing + [0.1] * 3))
    assert [(e.kind, e.sample) for e in edges] == [
        ("started", (10 - 2) * WINDOW),
        ("paused", 19 * WINDOW),  # the 0.4 windows still count as speech
        ("stopped", 20 * WINDOW),
    ]
    # Speech right after a stop: the next turn's padding never reaches back into the last one.
    again = detector.feed(np.array([0.9]))
    assert again[0].kind == "started" and again[0].sample == 20 * WINDOW


def test_a_pause_shorter_than_the_silence_duration_resumes_the_turn() -> None:
    detector = TurnDetector(ServerVad(silence_duration_ms=500))  # 16 windows; a pause is 6
    edges = detector.feed(np.array([0.9] * 5 + [0.1] * 8 + [0.9] * 3 + [0.1] * 16))
    assert [(e.kind, e.sample // WINDOW) for e in edges] == [
        ("started", 0),
        ("paused", 11),
        ("resumed", 13),
        ("paused", 22),
        ("stopped", 32),
    ]


def words(*spoken: tuple[str, float]) -> list[TimedWord]:
    return [TimedWord(start, start + 0.3, f" {text}") for text, start in spoken]


def test_words_are_committed_when_two_decodes_agree_and_never_taken_back() -> None:
    agreement = Agreement()
    assert agreement.update(words(("the", 0.0), ("cat", 0.4))) == []
    newly = agreement.update(words(("The", 0.0), ("cat,", 0.4), ("sat", 0.8)))
    assert [w.key for w in newly] == ["the", "cat"]  # case and punctuation do not matter
    # A later decode that hears "cat" differently cannot change what was sent: only what
    # follows the committed words is compared.
    newly = agreement.update(words(("A", 0.0), ("hat", 0.4), ("sat", 0.8), ("in", 1.2)))
    assert join(newly) == " sat"
    assert agreement.update(words(("the", 0.0), ("cat", 0.4), ("sat", 0.8), ("on", 1.2))) == []
    assert join(agreement.committed) == " The cat, sat"
    assert join(agreement.pending) == " on"


def test_a_wavering_first_word_does_not_hold_back_the_words_agreed_after_it() -> None:
    agreement = Agreement()
    heard = ("I", 0.6), ("looked", 0.8), ("at", 1.1), ("the", 1.2), ("budget", 1.4)
    agreement.update(words(("Good", 0.0), ("morning.", 0.3), *heard[:4]))
    # "Morning." now: the newer decode's opening is sent with the run both agree on.
    newly = agreement.update(words(("Morning.", 0.2), *heard))
    assert join(newly) == " Morning. I looked at the"
    assert join(agreement.pending) == " budget"
    # Two words agreed after the wavering one are not enough, nor a run at another time.
    later = [(word, start + 2.0) for word, start in heard]
    for before, after in ((heard[:2], heard[:2]), (heard, later)):
        agreement = Agreement()
        agreement.update(words(("Tomorrow", 0.1), *before))
        assert agreement.update(words(("Morning.", 0.2), *after)) == []
    # Nor a run after more than two differing words.
    agreement = Agreement()
    agreement.update(words(("So", 0.0), ("good", 0.1), ("morning", 0.3), *heard))
    assert agreement.update(words(("Well", 0.0), ("hello", 0.1), ("there", 0.3), *heard)) == []


def test_what_follows_the_committed_words_drops_a_repeat_of_their_tail() -> None:
    agreement = Agreement()
    agreement.update(words(("one", 0.0), ("two", 0.5)))
    agreement.update(words(("one", 0.0), ("two", 0.5), ("three", 1.0)))
    assert join(agreement.committed) == " one two"
    # Timed a little later than before (after a trim), "two" is not taken for a new word.
    later = words(("two", 0.75), ("three", 1.0), ("four", 1.5))
    assert join(agreement.beyond_committed(later)) == " three four"


def test_a_new_word_timed_before_the_committed_end_is_found_by_the_words_before_it() -> None:
    agreement = Agreement()
    # Whisper stretched "two" to 1.3 s in the decodes that committed it...
    stretched = [TimedWord(0.0, 0.5, " one"), TimedWord(0.5, 1.3, " two")]
    agreement.update(stretched)
    agreement.update([*stretched, TimedWord(1.35, 1.6, " three")])
    assert agreement.committed_end == 1.3
    # ...and times it to 0.9 s now: "three", at 1.0 s, is new, though it starts before 1.2 s.
    later = [*words(("one", 0.0), ("two", 0.5)), TimedWord(1.0, 1.4, " three")]
    assert join(agreement.beyond_committed(later)) == " three"
    # A second "two", far from the committed one, is a new word.
    far = [*words(("one", 0.0), ("two", 0.5), ("two", 3.0)), TimedWord(3.4, 3.6, " four")]
    assert join(agreement.beyond_committed(far)) == " two four"
    # With the committed "two" heard differently, the far one does not stand in for it.
    other = [*words(("one", 0.0), ("too", 0.5), ("two", 3.0)), TimedWord(3.4, 3.6, " four")]
    assert join(agreement.beyond_committed(other)) == " two four"


def test_a_trim_commits_the_pending_words_it_would_cut_off() -> None:
    agreement = Agreement()
    agreement.update(words(("alpha", 0.0), ("beta", 5.0), ("gamma", 9.0)))
    assert join(agreement.force(before_s=6.0)) == " alpha beta"
    assert join(agreement.pending) == " gamma"


def test_a_session_update_changes_only_what_it_sends() -> None:
    config = SessionConfig()
    update = {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {"input": {"transcription": {"language": "en"}, "turn_detection": None}},
        },
    }
    changed = config.updated(update)
    assert changed.language == "en" and changed.turn_detection is None
    assert changed.format == "audio/pcm" and changed.transcribe
    again = changed.updated(
        {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcmu"}}},
            },
        }
    )
    assert again.format == "audio/pcmu" and again.language == "en" and again.turn_detection is None


def test_the_beta_update_maps_onto_the_same_settings() -> None:
    config = SessionConfig().updated(
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "g711_alaw",
                "input_audio_transcription": {"model": "whisper-1", "prompt": "Acme"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
            },
        }
    )
    assert config.format == "audio/pcma" and config.prompt == "Acme"
    assert config.turn_detection == ServerVad(silence_duration_ms=800)


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"type": "realtime"}, "invalid_value", "session.type"),
        ({"type": "transcription", "voice": "alloy"}, "unknown_parameter", "session.voice"),
        (
            {"type": "transcription", "audio": {"input": {"format": {"type": "audio/flac"}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {
                "type": "transcription",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}},
            },
            "invalid_value",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {
                "type": "transcription",
                "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}},
            },
            "invalid_value",
            "session.audio.input.turn_detection.type",
        ),
    ],
)
def test_a_bad_update_names_the_parameter(session: dict, code: str, param: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ProtocolError) as raised:
        SessionConfig().updated({"type": "session.update", "session": session})
    assert (raised.value.code, raised.value.param) == (code, param)


async def test_an_early_decode_finished_before_the_speaker_went_on_counts_as_an_interim() -> None:
    """A pause starts the turn's final decode early; when the speaker goes on, that decode's
    words are compared with the next interim decode's like any interim's: here the next one
    agrees with it, and its words go out at once."""
    spoken = words(("the", 0.0), ("cat", 0.4), ("sat", 0.8))
    heard: list[int] = []

    async def decode(audio: AudioArray, options: TranscribeOptions) -> Transcript:
        heard.append(len(audio))
        said = [Word(start=w.start, end=w.end, word=w.text, probability=1.0) for w in spoken]
        segment = Segment(
            id=0, seek=0, start=0, end=1.1, text=join(spoken), tokens=[], temperature=0,
            avg_logprob=0, compression_ratio=1, no_speech_prob=0, words=said,
        )  # fmt: skip
        return Transcript(
            text=join(spoken), language="en", language_probability=1, duration=len(audio) / 16000,
            segments=[segment], model="tiny.en",
        )  # fmt: skip

    sent: list[dict[str, Any]] = []

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    buffer = LiveBuffer()
    decoder = TurnDecoder(
        "sess", send, decode, lambda prompt: TranscribeOptions(model="tiny.en"), buffer,
        LivePacing(step_s=1.0),
    )  # fmt: skip
    decoder.open = turn = Turn(item_id="item", start=0, offset=0)
    decoder.start()
    try:
        buffer.append(np.zeros(16000, dtype=np.float32))
        decoder.pause(turn, 16000)
        await wait_until(lambda: len(heard) == 1)
        await asyncio.sleep(0)  # the early decode's task ends after its decode returns
        decoder.resume(turn)
        buffer.append(np.zeros(16000, dtype=np.float32))
        decoder.wake()
        await wait_until(lambda: len(heard) == 2 and bool(sent))
    finally:
        await decoder.close()
    assert heard == [16000, 32000]  # the pause's decode, then one interim
    assert [event["delta"] for event in sent] == ["the cat sat"]


async def wait_until(done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
