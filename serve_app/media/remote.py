"""Audio in object storage: its size checked from the object's metadata before any byte of
it is read, then its bytes streamed into the decoder as they arrive.

Streaming lets the duration limit stop the download: the decoder is cut off as soon as the
audio runs past MAX_AUDIO_DURATION_SEC (or the container declares more), and the rest of the
object is never fetched. MP4 and M4A files are downloaded first instead, to a temporary file:
their index often comes last, and FFmpeg cannot go back for the audio in a stream.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import PurePath
from typing import BinaryIO

from serve_app.media import audio
from serve_app.media.audio import AudioLimits, DecodedAudio
from serve_app.media.objects import ObjectRef
from serve_app.media.storage import ObjectStorage

# Containers whose index may follow the audio (the mov demuxer's).
SEEKABLE_ONLY = frozenset({".mp4", ".m4a"})


def check_object(storage: ObjectStorage, ref: ObjectRef, limits: AudioLimits) -> int:
    """The object's size, checked against the limits; its extension too. Blocking."""
    audio.check_extension(ref.key)
    size = storage.size(ref)
    audio.check_size(size, limits)
    return size


def decode_object(storage: ObjectStorage, ref: ObjectRef, limits: AudioLimits) -> DecodedAudio:
    """Decode the object's audio. Blocking; a storage failure part way raises
    StorageUnavailableError, never a transcript of half the audio."""
    if PurePath(ref.key).suffix.lower() in SEEKABLE_ONLY:
        with tempfile.TemporaryFile() as copy:
            storage.stream(ref, copy.write, limits.max_bytes)
            copy.flush()
            copy.seek(0)
            return audio.decode(copy, limits)
    failure: Exception | None = None
    with _fed(storage, ref, limits.max_bytes) as (source, failed):
        try:
            decoded = audio.decode(source, limits)
        except Exception as exc:
            failure = exc
    # The writer has ended here. If the storage failed, the decoder saw the stream end early:
    # that failure, not the decoder's reading of a cut file, is what went wrong.
    if failed:
        raise failed[0]
    if failure is not None:
        raise failure
    return decoded


@contextlib.contextmanager
def _fed(
    storage: ObjectStorage, ref: ObjectRef, max_bytes: int
) -> Iterator[tuple[BinaryIO, list[Exception]]]:
    """A pipe the object's bytes are written into by a thread, and that thread's failure
    (empty while it has none). Leaving closes the reading end, which stops the writer (a
    decoder that stopped early leaves the rest unread) before it is waited for."""
    read_fd, write_fd = os.pipe()
    failed: list[Exception] = []

    def feed() -> None:
        try:
            with open(write_fd, "wb") as sink:  # buffered: every write whole
                storage.stream(ref, sink.write, max_bytes)
        except BrokenPipeError:
            pass  # the decoder had what it needed (or gave up): the rest is not wanted
        except Exception as exc:  # handed to the decoding thread, which raises it
            failed.append(exc)

    writer = threading.Thread(target=feed, name=f"fetch {ref.name}", daemon=True)
    source = open(read_fd, "rb", buffering=0)  # noqa: SIM115 (closed below, before the join)
    try:
        writer.start()
        yield source, failed
    finally:
        source.close()
        writer.join()
