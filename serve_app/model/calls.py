"""What a model replica is asked to do: typed requests that cross the model boundary (Ray
pickles them), instead of positional arguments repeated at each end."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.media.audio import AudioArray
from serve_app.model.chunking import Window
from serve_app.schemas import TranscribeOptions


@dataclass(frozen=True)
class FileCall:
    """A short file in one call: the replica finds its speech windows itself."""

    audio: AudioArray
    options: TranscribeOptions


@dataclass(frozen=True)
class UnitCall:
    """One work unit of a long file: its audio, its speech windows (seconds from the unit's
    start, as planned for the whole file) and a label naming the part in the replica's log."""

    audio: AudioArray
    windows: list[Window]
    options: TranscribeOptions
    label: str = "a unit"
