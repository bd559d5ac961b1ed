"""A live session's audio: samples addressed by their index since the session's first one,
kept only from a floor the session raises as turns end and long turns are trimmed."""

from __future__ import annotations

import numpy as np

from serve_app.media.audio import AudioArray


class LiveBuffer:
    def __init__(self) -> None:
        self._chunks: list[AudioArray] = []
        self.start = 0  # index of the first sample kept
        self.end = 0  # index after the last sample received

    def append(self, samples: AudioArray) -> None:
        if len(samples):
            self._chunks.append(samples)
            self.end += len(samples)

    def slice(self, start: int, end: int) -> AudioArray:
        """A copy of samples [start, end); what was dropped reads as missing, not as silence."""
        start, end = max(start, self.start), min(end, self.end)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        whole = self._whole()
        return whole[start - self.start : end - self.start].copy()

    def drop_before(self, index: int) -> None:
        index = min(index, self.end)
        if index <= self.start:
            return
        whole = self._whole()
        rest = whole[index - self.start :].copy()  # a view would keep the dropped part
        self._chunks = [rest] if len(rest) else []
        self.start = index

    def clear(self) -> None:
        self._chunks, self.start = [], self.end

    def _whole(self) -> AudioArray:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, dtype=np.float32)
