"""Audio checked: an uploaded file becomes decoded samples, or a domain error."""

from __future__ import annotations

import asyncio

from starlette.datastructures import UploadFile

from serve_app import audio
from serve_app.audio import AudioLimits, DecodedAudio


async def check_upload(upload: UploadFile, limits: AudioLimits) -> str:
    """Extension and size of an upload, before anything reads it; returns the extension."""
    suffix = audio.check_extension(upload.filename)
    size = upload.size
    if size is None:  # not reported by the parser: measure the spooled file
        size = await asyncio.to_thread(_measure, upload)
    audio.check_size(size, limits)
    return suffix


async def decode_upload(upload: UploadFile, limits: AudioLimits) -> DecodedAudio:
    await check_upload(upload, limits)
    await upload.seek(0)
    # Decoding is CPU-bound: keep it off the replica's event loop.
    return await asyncio.to_thread(audio.decode, upload.file, limits)


def _measure(upload: UploadFile) -> int:
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    return size
