"""Tenant isolation in batching, with the real model (tiny.en) and the replica's real batcher:
one request's audio never shapes another's text. Each victim clip is sent alone, then at once
with a hostile neighbour (reversed speech, foreign speech, noise, a sentence of its own), so
both share a batch: the victim's text must be its solo text, with no word of the neighbour's.
Cross-request packing failed these (an audit: "positive for melanoma" came back as the
neighbour's words, a password split between two answers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_app.media import audio
from serve_app.model.transcriber import Transcriber
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import Settings
from tests.support import speech

VICTIMS = {
    "biopsy": "The biopsy came back positive for melanoma.",
    "password": "My new password is purple elephant.",
    "account": "My account number is 4 4 7 1.",
}
# A word of each that tiny.en hears in espeak-ng's voice (it hears "biopsy" as "I up, see").
HEARD = {"biopsy": "melanoma", "password": "elephant", "account": "number"}
NEIGHBOURS = {
    "english": ("en-us", "Please send the quarterly invoice to the warehouse in Denver."),
    "spanish": ("es", "El agua del río corre hacia el mar durante toda la noche."),
}
# One event loop for the module: the module's transcriber keeps its batcher (and its events).
pytestmark = pytest.mark.asyncio(loop_scope="module")
LIMITS = audio.AudioLimits(max_bytes=10 << 20, max_duration_s=120)
Samples = np.ndarray[Any, Any]


def _spoken(speech_dir: Path, name: str, voice: str, text: str) -> Samples:
    wav = speech.speak(text, voice, speech_dir / f"isolation_{name}.wav")
    with open(wav, "rb") as f:
        return audio.decode(f, LIMITS).samples


@pytest.fixture(scope="module")
def victims(speech_dir: Path) -> dict[str, Samples]:
    return {name: _spoken(speech_dir, name, "en-us", text) for name, text in VICTIMS.items()}


@pytest.fixture(scope="module")
def neighbours(speech_dir: Path) -> dict[str, Samples]:
    spoken = {n: _spoken(speech_dir, n, voice, text) for n, (voice, text) in NEIGHBOURS.items()}
    rng = np.random.default_rng(7)
    return {
        **spoken,
        "reversed": spoken["english"][::-1].copy(),
        # Silence with noise: VAD may find speech in it, and the model may hear words.
        "noise": rng.normal(0, 0.08, 16000 * 6).astype(np.float32),
    }


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Transcriber:
    """tiny.en with WHISPER_PACK_WINDOWS=false: each window a decoding window of its own."""
    settings = Settings(
        whisper_model="tiny.en",
        whisper_pack_windows=False,
        models_dir=tmp_path_factory.mktemp("models"),
    )
    return Transcriber.load("tiny.en", settings)


_SOLO: dict[tuple[int, int], Transcript] = {}


async def _transcribe(tiny: Transcriber, samples: Samples) -> Transcript:
    """A clip alone (once per module and transcriber: the same arrays are sent alone in
    several tests)."""
    key = (id(tiny), id(samples))
    if key not in _SOLO:
        _SOLO[key] = await _alone(tiny, samples)
    return _SOLO[key]


async def _alone(tiny: Transcriber, samples: Samples) -> Transcript:
    windows = await asyncio.to_thread(tiny.speech_windows, samples)
    return await tiny.transcribe_batched(samples, windows, TranscribeOptions(language="en"))


async def _together(tiny: Transcriber, clips: list[Samples]) -> list[Transcript]:
    """All at once: their windows reach the batcher within its wait, so they share batches."""
    windows = [await asyncio.to_thread(tiny.speech_windows, c) for c in clips]
    options = TranscribeOptions(language="en")
    return await asyncio.gather(
        *(tiny.transcribe_batched(c, w, options) for c, w in zip(clips, windows, strict=True))
    )


@pytest.mark.parametrize("packing", [True, False], ids=["packing", "no packing"])
@pytest.mark.parametrize("neighbour", ["reversed", "spanish", "noise", "english"])
async def test_a_hostile_neighbour_in_the_batch_changes_nothing_of_a_victims_text(
    request: pytest.FixtureRequest,
    victims: dict[str, Samples],
    neighbours: dict[str, Samples],
    neighbour: str,
    packing: bool,
) -> None:
    """Under every setting of WHISPER_PACK_WINDOWS."""
    tiny: Transcriber = request.getfixturevalue("tiny" if packing else "unpacked")
    theirs = set(speech.words((await _transcribe(tiny, neighbours[neighbour])).text))
    before = tiny.batcher.stats
    for name, samples in victims.items():
        alone = (await _transcribe(tiny, samples)).text
        assert HEARD[name] in speech.words(alone), alone
        # The neighbour first, so its windows are ahead of the victim's in the batch.
        _, beside = await _together(tiny, [neighbours[neighbour], samples])
        assert beside.text == alone, (neighbour, name)
        foreign = theirs - set(speech.words(alone))
        assert not foreign & set(speech.words(beside.text)), (neighbour, name, beside.text)
    # They did share batches: a test of isolation that never batched them would prove nothing.
    assert tiny.batcher.stats.most_requests >= 2
    assert tiny.batcher.stats.batches > before.batches


async def test_every_answer_in_a_concurrent_mix_equals_its_solo_answer(
    tiny: Transcriber, victims: dict[str, Samples], neighbours: dict[str, Samples]
) -> None:
    """Many clips in flight in changing company (three at a time, then all at once, in two
    orders): each one's text and segments are what it gives alone."""
    clips = [*victims.values(), *neighbours.values()]
    solo = [await _transcribe(tiny, c) for c in clips]
    mixes = [
        [list(range(i, min(i + 3, len(clips)))) for i in range(0, len(clips), 3)],
        [list(range(len(clips)))],
        [list(reversed(range(len(clips))))],
    ]
    for mix in mixes:
        for group in mix:
            found = await _together(tiny, [clips[i] for i in group])
            for i, transcript in zip(group, found, strict=True):
                assert transcript.text == solo[i].text, (group, i)
                assert _shape(transcript) == _shape(solo[i]), (group, i)


def _shape(transcript: Transcript) -> list[tuple[str, float, float]]:
    return [(s.text, round(s.start, 2), round(s.end, 2)) for s in transcript.segments]
