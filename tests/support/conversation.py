"""A conversation of three synthesized voices for diarization tests: espeak-ng speaks each turn
of tests/fixtures/conversation.json in its speaker's voice, pydub joins them with pauses, and
the turns' times are kept as the reference (who spoke when, and what)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydub import AudioSegment

from serve_app.schemas import Word

SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "conversation.json"
RATE = 16000


@dataclass(frozen=True)
class SpokenTurn:
    speaker: str
    text: str
    start: float
    end: float


def conversation(out_dir: Path) -> tuple[Path, list[SpokenTurn]]:
    """(a 16 kHz mono WAV of the conversation, its reference turns)."""
    script = json.loads(SCRIPT.read_text())
    target = out_dir / "conversation.wav"
    pause = AudioSegment.silent(duration=script["pause_ms"], frame_rate=RATE)
    audio = AudioSegment.silent(duration=300, frame_rate=RATE)
    turns: list[SpokenTurn] = []
    for n, (speaker, text) in enumerate(script["turns"]):
        wav = speak_as(script["voices"][speaker], text, out_dir / f"turn_{n}.wav")
        spoken = AudioSegment.from_wav(wav).set_frame_rate(RATE).set_channels(1)
        start = len(audio) / 1000
        audio += spoken
        turns.append(SpokenTurn(speaker, text, start, len(audio) / 1000))
        audio += pause
    audio.set_sample_width(2).export(target, format="wav")
    return target, turns


# Known speakers' reference clips: other sentences in the conversation's voices, and a voice
# that is not in it.
REFERENCES = {
    "alice": "I will send the notes from this meeting to everyone before lunch tomorrow.",
    "beth": "The finance team asked for the final numbers by the end of next week.",
    "chen": "Let us check the calendar and find a good date for the next workshop.",
}
OUTSIDER = {"voice": "en-us+m3", "pitch": 60, "speed": 175}


def reference_clip(speaker: str, out_dir: Path) -> Path:
    """A clip of ``speaker`` (a voice of the conversation, or "outsider") saying a sentence
    that is not in the conversation."""
    script = json.loads(SCRIPT.read_text())
    voice = OUTSIDER if speaker == "outsider" else script["voices"][speaker]
    text = REFERENCES.get(speaker, "Nobody on this call has heard my voice before today.")
    return speak_as(voice, text, out_dir / f"reference_{speaker}.wav")


def speak_as(voice: dict[str, object], text: str, wav: Path) -> Path:
    subprocess.run(
        [
            "espeak-ng",
            "-v",
            str(voice["voice"]),
            "-p",
            str(voice["pitch"]),
            "-s",
            str(voice["speed"]),
            "-w",
            str(wav),
            text,
        ],
        check=True,
    )
    return wav


def turn_agreement(words: list[Word], turns: list[SpokenTurn]) -> tuple[float, dict[str, str]]:
    """The share of words under their turn's majority label, and each speaker's label (the
    label most of their words carry); one label per speaker is asserted by the callers."""
    agree = total = 0
    labels: dict[str, Counter[str]] = {}
    for turn in turns:
        said = [w.speaker or "?" for w in words if turn.start <= (w.start + w.end) / 2 <= turn.end]
        if not said:
            continue
        label, count = Counter(said).most_common(1)[0]
        agree, total = agree + count, total + len(said)
        labels.setdefault(turn.speaker, Counter())[label] += count
    return agree / max(total, 1), {s: c.most_common(1)[0][0] for s, c in labels.items()}
