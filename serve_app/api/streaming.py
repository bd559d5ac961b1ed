"""``stream=true`` on the sync transcription route: OpenAI's transcript.text.delta events as
segments are decoded, then transcript.text.done with the whole text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event
from starlette.types import Receive, Scope, Send

from serve_app import formats
from serve_app.api.deps import Backend
from serve_app.capacity.admission import Reservation
from serve_app.errors import ServiceError
from serve_app.media.audio import AudioArray
from serve_app.schemas import Segment, TranscribeOptions, Transcript

logger = logging.getLogger(__name__)


def stream_transcription(
    backend: Backend, samples: AudioArray, options: TranscribeOptions, held: Reservation
) -> StreamingResponse:
    """``held`` is released when the stream ends, however it ends."""
    return _Releasing(
        held,
        _events(backend, samples, options, held),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _Releasing(StreamingResponse):
    """Releases the reservation once the response is over, also when the body never started:
    a client gone before the first event leaves a generator nobody iterates, so its own
    ``with`` never runs (the decoded audio stayed reserved for good)."""

    def __init__(self, held: Reservation, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._held.release()


async def _events(
    backend: Backend, samples: AudioArray, options: TranscribeOptions, held: Reservation
) -> AsyncIterator[bytes]:
    with held:
        async for event in _transcription_events(backend, samples, options):
            yield event


async def _transcription_events(
    backend: Backend, samples: AudioArray, options: TranscribeOptions
) -> AsyncIterator[bytes]:
    decoded: asyncio.Queue[list[Segment]] = asyncio.Queue()
    work = asyncio.create_task(backend.transcribe(samples, options, decoded.put_nowait))
    first = True
    try:
        while not (work.done() and decoded.empty()):
            getter = asyncio.ensure_future(decoded.get())
            await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            for segment in getter.result():
                # Segment texts carry their leading space; the first delta should not.
                delta = segment.text.lstrip() if first else segment.text
                first = False
                event: dict[str, Any] = {"type": "transcript.text.delta", "delta": delta}
                if options.logprobs:
                    event["logprobs"] = formats.token_logprobs([segment])
                yield _event(event)
        transcript: Transcript = work.result()
    except ServiceError as exc:
        yield _event({"type": "error", "error": {"message": exc.message}})
        return
    except Exception:
        logger.exception("Streaming transcription failed")
        yield _event({"type": "error", "error": {"message": "Transcription failed"}})
        return
    finally:
        if not work.done():  # the client went away: stop the model work too
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
    done: dict[str, Any] = {"type": "transcript.text.done", "text": transcript.text}
    if options.logprobs:
        done["logprobs"] = formats.token_logprobs(transcript.segments)
    yield _event({**done, "usage": formats.usage(transcript)})


def _event(data: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(data, ensure_ascii=False))
