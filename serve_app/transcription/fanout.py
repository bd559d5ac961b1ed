"""Long audio across replicas: plan work units, detect the language once, transcribe units in
parallel (each one's windows batched inside its replica), retry failed units, merge in order.

The model is passed in (``transcription.port``), so this is plain asyncio and runs without Ray."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from serve_app.errors import ServiceBusyError, ServiceError
from serve_app.media.audio import AudioArray
from serve_app.model.calls import UnitCall
from serve_app.model.chunking import ChunkingOptions, WorkUnit, plan
from serve_app.model.segments import shifted
from serve_app.retry import Growth, RetryPolicy
from serve_app.schemas import Segment, TranscribeOptions, Transcript
from serve_app.transcription.port import Checkpoint, ProgressFn, SegmentsFn, UnitModel

logger = logging.getLogger(__name__)

PART_RETRIES = RetryPolicy(attempts=3, backoff_s=1.0, growth=Growth.LINEAR)


class UnitFailedError(ServiceError):
    """One part of a long file failed all its attempts."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class FanOut:
    model: UnitModel
    options: ChunkingOptions
    sample_rate: int = 16000
    # A replica that died is replaced in seconds: retrying at once could spend every attempt
    # of a part before Serve has a replica to send it to.
    retries: RetryPolicy = PART_RETRIES

    async def transcribe(
        self,
        audio: AudioArray,
        options: TranscribeOptions,
        on_progress: ProgressFn | None = None,
        on_segments: SegmentsFn | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> Transcript:
        """With a checkpoint, units finished by an earlier attempt are taken from it and each
        unit finished now is saved to it, so a retry redoes only what was not done."""
        chunking = self.options.with_vad(options.vad)
        units = await asyncio.to_thread(plan, audio, self.sample_rate, chunking)
        duration = len(audio) / self.sample_rate
        if not units:  # no speech at all
            return _empty(duration, options)
        language, probability = options.language, 1.0
        if language is None:
            first = units[0].windows[0]
            language, probability = await self.model.detect_language(
                audio[first.start : first.end], options.model, options.languages
            )
        fixed = options.model_copy(update={"language": language})
        planned = sum(unit.end - unit.start for unit in units)
        earlier = await checkpoint.load() if checkpoint is not None else {}
        if earlier:
            logger.info("Resuming: %d of %d units were done before", len(earlier), len(units))
        done = 0.0
        finished: dict[int, Transcript] = {}
        emitted = 0  # units 0..emitted-1 have had their segments handed out
        segment_count = 0

        async def run(unit: WorkUnit) -> Transcript:
            nonlocal done, emitted, segment_count
            result = earlier.get((unit.start, unit.end))
            if result is None:
                result = await self._unit_with_retries(audio, unit, fixed, len(units))
                if checkpoint is not None:
                    await checkpoint.save((unit.start, unit.end), result)
            # Silence between units counts as done with them: the last unit ends at 100%.
            done += (unit.end - unit.start) / planned * duration
            finished[unit.index] = result
            while on_segments and emitted in finished:
                part = shift_segments(
                    finished[emitted], units[emitted], self.sample_rate, duration, segment_count
                )
                segment_count += len(part)
                emitted += 1
                if part:
                    on_segments(part)
            if on_progress:
                on_progress(done, duration)
            return result

        tasks = [asyncio.create_task(run(unit)) for unit in units]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            # A part that failed for good (or a cancel) fails the file: its siblings' work on
            # the replicas is wasted from here on, so stop it instead of letting it finish.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        logger.info("Transcribed %.0f s in %d units", duration, len(units))
        return merge(units, parts, self.sample_rate, duration, language, probability)

    async def _unit_with_retries(
        self, audio: AudioArray, unit: WorkUnit, options: TranscribeOptions, total: int
    ) -> Transcript:
        windows = unit.relative_windows(self.sample_rate)
        label = describe(unit, total, self.sample_rate)
        error: ServiceError | None = None
        for attempt in range(1, self.retries.attempts + 1):
            try:
                part = audio[unit.start : unit.end]
                return await self.model.transcribe_unit(UnitCall(part, windows, options, label))
            except ServiceError as exc:
                # Busy (no replica at all, a limit): the caller is told to come back, as a
                # whole; retrying a part at once would only hit the same wall.
                if not exc.retryable or isinstance(exc, ServiceBusyError):
                    raise
                error = exc
                logger.warning("Part %d failed (attempt %d): %s", unit.index + 1, attempt, exc)
                if not self.retries.is_final(attempt):
                    await asyncio.sleep(self.retries.delay_s(attempt))
        assert error is not None
        raise UnitFailedError(
            f"{label[0].upper()}{label[1:]} failed after {self.retries.attempts} attempts: "
            f"{error.message}",
            retryable=True,
        )


def describe(unit: WorkUnit, total: int, sample_rate: int) -> str:
    """How a unit is named in errors and logs: 'part 2 of 4 (240.2-481.7 s)'."""
    start, end = unit.start / sample_rate, unit.end / sample_rate
    return f"part {unit.index + 1} of {total} ({start:.1f}-{end:.1f} s)"


def merge(
    units: list[WorkUnit],
    parts: list[Transcript],
    sample_rate: int,
    duration: float,
    language: str,
    language_probability: float,
) -> Transcript:
    """Unit transcripts, in order, with timestamps made absolute and ids renumbered."""
    segments: list[Segment] = []
    for unit, part in zip(units, parts, strict=True):
        segments += shift_segments(part, unit, sample_rate, duration, len(segments))
    return Transcript(
        text=" ".join(s.text.strip() for s in segments if s.text.strip()),
        language=language,
        language_probability=language_probability,
        duration=duration,
        segments=segments,
        model=parts[0].model,
        task=parts[0].task,
    )


def shift_segments(
    part: Transcript, unit: WorkUnit, sample_rate: int, duration: float, first_id: int
) -> list[Segment]:
    """One unit's segments on the file's clock, numbered from ``first_id``."""
    offset = unit.start / sample_rate
    return [
        shifted(segment, offset, duration).model_copy(update={"id": first_id + i})
        for i, segment in enumerate(part.segments)
    ]


def _empty(duration: float, options: TranscribeOptions) -> Transcript:
    return Transcript(
        text="",
        language=options.language or "",
        language_probability=0.0,
        duration=duration,
        segments=[],
        model=options.model or "",
        task=options.task,
    )
