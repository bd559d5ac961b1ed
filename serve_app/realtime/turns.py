"""Server VAD for live audio: where a speaker's turn starts and stops, as OpenAI's
``server_vad`` defines it (threshold, prefix padding, silence duration).

Speech probabilities come from the Silero model faster-whisper ships (the one that cuts long
files), one per 32 ms window; the detector is plain logic over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from serve_app.media.audio import SAMPLE_RATE, AudioArray

WINDOW = 512  # samples per probability: Silero's step at 16 kHz, 32 ms
# Speech ends when the probability falls this far below the threshold (Silero's own rule: one
# threshold to start and a lower one to stop, so a turn does not flicker at the edge).
_HYSTERESIS = 0.15
# Silence after which a turn is taken as probably over and its final decode starts early, while
# the VAD still waits out the rest of silence_duration_ms: a pause between words is shorter.
_PAUSE_MS = 200

_CONTEXT = 64  # samples of the window before that the model hears with each window


class SpeechModel(Protocol):
    """One step of Silero over consecutive windows: (probabilities, state after them)."""

    def __call__(self, windows: AudioArray, state: Any) -> tuple[np.ndarray, Any]: ...


def silero() -> SpeechModel:
    """faster-whisper's Silero VAD (its ONNX session, the model that cuts long files), run with
    its recurrent state carried from call to call: the model reads the windows as one sequence,
    so a stream's probabilities equal the whole file's only if the state goes on. faster-whisper
    1.2 has no streaming call, hence its session is used directly (pinned below 1.3)."""
    from faster_whisper.vad import get_vad_model

    session = get_vad_model().session  # cached per process: one for every live session

    def run(windows: AudioArray, state: Any) -> tuple[np.ndarray, Any]:
        h, c, context = state if state is not None else (_zeros(), _zeros(), None)
        rows = windows.reshape(-1, WINDOW)
        previous = np.roll(rows[:, -_CONTEXT:], 1, axis=0)
        previous[0] = context if context is not None else 0.0
        batch = np.concatenate([previous, rows], axis=1).astype(np.float32)
        out, h, c = session.run(None, {"input": batch, "h": h, "c": c})
        return np.asarray(out).reshape(-1), (h, c, rows[-1, -_CONTEXT:].copy())

    return run


def _zeros() -> np.ndarray:
    return np.zeros((1, 1, 128), dtype=np.float32)


class SpeechStream:
    """Silero's probability for each whole window of a stream, the same as for the whole file."""

    def __init__(self, model: SpeechModel) -> None:
        self._model = model
        self._rest = np.zeros(0, dtype=np.float32)
        self._state: Any = None

    def push(self, samples: AudioArray) -> np.ndarray:
        audio = np.concatenate([self._rest, samples]) if len(self._rest) else samples
        whole = len(audio) // WINDOW * WINDOW
        self._rest = audio[whole:].astype(np.float32, copy=True)
        if not whole:
            return np.zeros(0, dtype=np.float32)
        found, self._state = self._model(audio[:whole].astype(np.float32), self._state)
        return found


@dataclass(frozen=True)
class ServerVad:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class Edge:
    # paused: speech has stopped for a moment, the turn may be ending; resumed: it was not.
    kind: Literal["started", "paused", "resumed", "stopped"]
    sample: int  # from the session's first sample: a start includes the prefix padding


class TurnDetector:
    """Turns speech probabilities into turn edges, window by window."""

    def __init__(self, vad: ServerVad, first_window: int = 0) -> None:
        self.vad = vad
        self.speaking = False
        self._window = first_window  # index of the next window, from the session's start
        self._silent = 0
        self._floor = 0  # a turn's padding never reaches back into the previous turn
        self._silence_windows = max(1, round(vad.silence_duration_ms * SAMPLE_RATE / 1000 / WINDOW))
        pause_windows = round(_PAUSE_MS * SAMPLE_RATE / 1000 / WINDOW)
        self._pause_windows = min(pause_windows, self._silence_windows - 1)
        self._padding = int(vad.prefix_padding_ms * SAMPLE_RATE / 1000)
        self._stop_below = max(0.01, vad.threshold - _HYSTERESIS)

    def feed(self, probabilities: np.ndarray) -> list[Edge]:
        edges = []
        for probability in probabilities:
            at = self._window * WINDOW
            self._window += 1
            if not self.speaking:
                if probability >= self.vad.threshold:
                    self.speaking, self._silent = True, 0
                    edges.append(Edge("started", max(self._floor, at - self._padding)))
            elif probability < self._stop_below:
                self._silent += 1
                if self._silent == self._pause_windows:
                    edges.append(Edge("paused", self._window * WINDOW))
                if self._silent >= self._silence_windows:
                    self.speaking = False
                    self._floor = self._window * WINDOW
                    edges.append(Edge("stopped", self._floor))
            else:
                if self._silent >= self._pause_windows > 0:
                    edges.append(Edge("resumed", at))
                self._silent = 0
        return edges

    def reset(self, at_sample: int) -> None:
        """The buffer was committed or cleared by the client: a turn in progress ends there."""
        self.speaking, self._silent = False, 0
        self._floor = at_sample
