"""Calling the model pools from another deployment: short audio in one call, long audio fanned
out over replicas by units, Ray's failures made domain errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, cast

from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serve_app.audio import AudioArray
from serve_app.errors import ReplicaUnavailableError, ServiceError
from serve_app.fanout import Checkpoint, FanOut, ProgressFn, SegmentsFn
from serve_app.pools import Pool, PoolRouter
from serve_app.schemas import Segment, TranscribeOptions, Transcript
from serve_app.settings import Settings

logger = logging.getLogger(__name__)


class ModelClient:
    def __init__(
        self, pools: list[DeploymentHandle[Any]], weights: list[float], settings: Settings
    ) -> None:
        self.router = PoolRouter(
            [
                Pool(handle.deployment_name, handle, weight)
                for handle, weight in zip(pools, weights, strict=True)
            ]
        )
        self._sample_rate = settings.audio_sample_rate
        self._chunking = settings.chunking

    async def transcribe(
        self,
        audio: AudioArray,
        options: TranscribeOptions,
        on_progress: ProgressFn | None = None,
        on_segments: SegmentsFn | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> Transcript:
        """Short audio in one call (streamed segment by segment when ``on_segments`` is
        given); long audio fanned out in units across replicas, resumed from ``checkpoint``."""
        duration = len(audio) / self._sample_rate
        if duration < self._chunking.min_fanout_s:
            if on_segments is None:
                result: Transcript = await self._call("transcribe", options.model, audio, options)
            else:
                result = await self._stream(audio, options, on_segments)
            if on_progress:
                on_progress(duration, duration)
            return result
        model = options.model

        async def unit(
            part: AudioArray, windows: list[dict[str, float]], opts: TranscribeOptions, label: str
        ) -> Transcript:
            transcript: Transcript = await self._call(
                "transcribe_unit", model, part, windows, opts, label
            )
            return transcript

        async def detect(part: AudioArray) -> tuple[str, float]:
            found: tuple[str, float] = await self._call("detect_language", model, part)
            return found

        fan_out = FanOut(unit, detect, self._chunking, self._sample_rate)
        return await fan_out.transcribe(audio, options, on_progress, on_segments, checkpoint)

    async def _call(self, method: str, model: str | None, *args: Any) -> Any:
        with self.router.lease() as pool, _replica_errors(pool.name):
            handle = pool.target.options(multiplexed_model_id=model or "")
            return await getattr(handle, method).remote(*args)

    async def _stream(
        self, audio: AudioArray, options: TranscribeOptions, on_segments: SegmentsFn
    ) -> Transcript:
        result: Transcript | None = None
        with self.router.lease() as pool, _replica_errors(pool.name):
            handle = pool.target.options(multiplexed_model_id=options.model or "", stream=True)
            stream = cast(
                DeploymentResponseGenerator[Any], handle.transcribe_stream.remote(audio, options)
            )
            async for item in stream:
                if isinstance(item, Segment):
                    on_segments([item])
                else:
                    result = item
        if result is None:
            raise ReplicaUnavailableError("Model replica ended the stream without a transcript")
        return result


@contextlib.contextmanager
def _replica_errors(pool: str) -> Iterator[None]:
    try:
        yield
    except ServiceError:
        raise  # a domain error raised in the replica keeps its type across Ray
    except Exception as exc:  # replica died, unreachable, overloaded: worth a retry
        # Ray's errors name actors, nodes and replicas: they go to the log, not to clients.
        logger.warning("Model replica in %s failed: %r", pool, exc)
        raise ReplicaUnavailableError(
            "A model replica failed while transcribing; the request may be retried"
        ) from exc
