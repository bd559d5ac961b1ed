"""A transcription job from a file path or an object: source checked, audio checked, model runs.

Used by every edge that takes a path rather than an upload (AMQP ingest, JSON jobs); the model
call is passed in, so this runs without Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from serve_app.capacity.admission import AudioAdmission
from serve_app.errors import PathNotAllowedError
from serve_app.media import audio, objects, remote
from serve_app.media.audio import AudioArray, AudioLimits, DecodedAudio
from serve_app.media.decoder import Sandbox, bundled_ffmpeg
from serve_app.media.paths import resolve_audio_path
from serve_app.media.storage import ObjectStorage
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import Settings
from serve_app.transcription.port import Checkpoint, ProgressFn, SegmentsFn

TranscribeFn = Callable[[AudioArray, TranscribeOptions], Awaitable[Transcript]]


@dataclass(frozen=True)
class FileRequest:
    """One job's transcription as the runner asks for it: the audio's path, the options, where
    progress and segments go as they come, and the finished units to resume from."""

    path: str
    options: TranscribeOptions
    on_progress: ProgressFn
    on_segments: SegmentsFn
    checkpoint: Checkpoint


# What runs a job's transcription (the Ingest's model client, or a test's stand-in).
TranscribePathFn = Callable[[FileRequest], Awaitable[Transcript]]


def audio_limits(settings: Settings) -> AudioLimits:
    return AudioLimits(
        max_bytes=settings.max_file_size_bytes,
        max_duration_s=settings.max_audio_duration_sec,
        sample_rate=settings.audio_sample_rate,
        sandbox=Sandbox(
            timeout_s=settings.decode_timeout_sec,
            memory_bytes=settings.decode_memory_mb * 1024 * 1024,
            ffmpeg=settings.ffmpeg_binary or bundled_ffmpeg(),
        ),
    )


def check_path(raw_path: str, roots: Iterable[Path], limits: AudioLimits) -> Path:
    """A path from outside, resolved inside the roots, with its extension and size checked."""
    path = resolve_audio_path(raw_path, roots)
    audio.check_extension(raw_path)
    audio.check_size(path.stat().st_size, limits)
    return path


async def transcribe_file(
    raw_path: str,
    options: TranscribeOptions,
    settings: Settings,
    transcribe: TranscribeFn,
    admission: AudioAdmission,
    storage: ObjectStorage | None = None,
) -> Transcript:
    """A job's audio (a path, or an s3:// object) checked, decoded, transcribed."""
    limits = audio_limits(settings)
    if objects.is_object_name(raw_path):
        ref = objects.resolve_object(raw_path, settings.audio_grants)
        if storage is None:  # grants come from settings that also make the client
            raise PathNotAllowedError("s3:// sources are not enabled here")
        await asyncio.to_thread(remote.check_object, storage, ref, limits)
        decoded, held = await admission.decode(remote.decode_object, storage, ref, limits)
    else:
        path = check_path(raw_path, settings.audio_roots, limits)
        decoded, held = await admission.decode(_decode_path, path, limits)
    with held:
        return await transcribe(decoded.samples, options)


def admission_for(settings: Settings, queue: int | None) -> AudioAdmission:
    return AudioAdmission(
        concurrency=settings.decode_concurrency,
        queue=queue,
        max_bytes=int(settings.max_decoded_audio_mb * 1024 * 1024),
    )


def _decode_path(path: Path, limits: AudioLimits) -> DecodedAudio:
    with open(path, "rb") as f:
        return audio.decode(f, limits)
