"""Live audio in: OpenAI's realtime input formats to 16 kHz mono float32, append by append.

The bytes are raw samples whose format the session declared, never a container, so nothing
here parses untrusted structure: G.711 bytes index a 256-entry table, PCM16 is read as
integers, and PyAV's resampler (libswresample, FFmpeg's) turns 24 kHz or 8 kHz into Whisper's
16 kHz, keeping its filter state between appends so that audio sent in pieces resamples to the
same samples as audio sent at once.
"""

from __future__ import annotations

import av
import numpy as np

from serve_app.media.audio import SAMPLE_RATE, AudioArray

# OpenAI's GA names, with the rate each implies (PCM is 24 kHz only; G.711 is 8 kHz).
RATES = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}
# The beta protocol's names for the same formats.
BETA_NAMES = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}


def _ulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = (((codes & 0x0F) << 3) + 0x84 << exponent) - 0x84
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


_TABLES = {"audio/pcmu": _ulaw_table(), "audio/pcma": _alaw_table()}


class LiveAudio:
    """One session's input converter; a format change starts a new one."""

    def __init__(self, audio_format: str) -> None:
        self.format = audio_format
        self.rate = RATES[audio_format]
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._odd = b""  # half a PCM16 sample, when an append ends mid-sample

    def bytes_per_second(self) -> int:
        return self.rate * (2 if self.format == "audio/pcm" else 1)

    def push(self, data: bytes) -> AudioArray:
        """16 kHz samples of ``data``; a few ms stay in the resampler until the next push."""
        if self.format == "audio/pcm":
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
            samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
        else:
            samples = _TABLES[self.format][np.frombuffer(data, dtype=np.uint8)]
        if not len(samples):
            return np.zeros(0, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)
