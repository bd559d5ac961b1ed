"""Audio checked: an uploaded file becomes decoded samples, or a domain error."""

from __future__ import annotations

import asyncio

from starlette.datastructures import UploadFile

from serve_app.capacity.admission import AudioAdmission, Reservation
from serve_app.errors import InvalidOptionError
from serve_app.media import audio
from serve_app.media.audio import AudioLimits, DecodedAudio
from serve_app.model_options import has_control_characters

MAX_FILENAME_BYTES = 255


async def check_upload(upload: UploadFile, limits: AudioLimits) -> tuple[str, int]:
    """Name, extension and size of an upload, before anything reads it; returns the extension
    and the size."""
    check_filename(upload.filename)
    suffix = audio.check_extension(upload.filename)
    size = upload.size
    if size is None:  # not reported by the parser: measure the spooled file
        size = await asyncio.to_thread(_measure, upload)
    audio.check_size(size, limits)
    return suffix, size


def check_filename(name: str | None) -> None:
    """Names are stored and shown: no control characters, and what a file system allows."""
    if name is None:
        return
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise InvalidOptionError(
            f"The file name is longer than {MAX_FILENAME_BYTES} bytes", param="file"
        )
    if has_control_characters(name):
        raise InvalidOptionError("The file name contains control characters", param="file")


async def decode_upload(
    upload: UploadFile, limits: AudioLimits, admission: AudioAdmission
) -> tuple[DecodedAudio, Reservation]:
    """Decoded samples, and their reservation in the replica's budget: release it once the
    model has answered."""
    await check_upload(upload, limits)
    await upload.seek(0)
    return await admission.decode(audio.decode, upload.file, limits)


def _measure(upload: UploadFile) -> int:
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    return size
