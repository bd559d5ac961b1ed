"""What routes depend on, injected through ``app.state`` by the Gateway replica."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import Depends, Request

from serve_app.capacity.admission import AudioAdmission, StreamLimit
from serve_app.capacity.backlog import Backlog
from serve_app.capacity.fair import Tenant
from serve_app.media.audio import AudioArray, AudioLimits
from serve_app.media.spool import Spool
from serve_app.media.storage import ObjectStorage
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import Settings
from serve_app.store import JobStore
from serve_app.transcription.pipeline import audio_limits
from serve_app.transcription.port import SegmentsFn


class Backend(Protocol):
    """The model and queue side as routes see it; the Gateway implements it over handles."""

    settings: Settings
    store: JobStore
    admission: AudioAdmission
    streams: StreamLimit
    backlog: Backlog
    diarization: bool  # a Diarizer deployment is there to ask
    owner_secret: bytes  # keys the HMAC of API keys into owner ids (the store's own secret)
    spool: Spool  # where uploads of async jobs wait
    storage: ObjectStorage | None  # S3 or the like, when the settings name a bucket

    async def transcribe(
        self,
        audio: AudioArray,
        options: TranscribeOptions,
        on_segments: SegmentsFn | None = None,
    ) -> Transcript: ...

    async def voice(self, audio: AudioArray, tenant: Tenant | None = None) -> list[float] | None:
        """A known speaker's reference clip as a voice embedding; None when it holds no
        speech. DiarizationUnavailableError without the diarize extra."""

    async def submit(self, job_id: str) -> None:
        """Queue an accepted job durably; QueueUnavailableError when that is impossible."""

    async def health(self) -> tuple[bool, dict[str, Any]]: ...


def get_backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


def get_limits(backend: Annotated[Backend, Depends(get_backend)]) -> AudioLimits:
    return audio_limits(backend.settings)


BackendDep = Annotated[Backend, Depends(get_backend)]
LimitsDep = Annotated[AudioLimits, Depends(get_limits)]
