"""A stand-in for the model and queue side behind the real FastAPI app and a real SQLite store,
for in-process route tests (what routes do, not what the model does)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serve_app.api.app import create_api
from serve_app.capacity.admission import AudioAdmission, StreamLimit
from serve_app.capacity.backlog import Backlog
from serve_app.capacity.fair import Tenant
from serve_app.media.spool import Spool
from serve_app.media.storage import ObjectStorage
from serve_app.schemas import TranscribeOptions, Transcript
from serve_app.settings import Settings
from serve_app.store import BacklogStore, JobStore, open_engine
from serve_app.transcription.pipeline import admission_for
from serve_app.transcription.port import SegmentsFn

KEY_A, KEY_B, KEY_C, ADMIN = "key-a", "key-b", "key-c", "admin-key"


@dataclass
class StandIn:
    """The Backend protocol over a real store; no model, no broker."""

    settings: Settings
    store: JobStore
    admission: AudioAdmission
    streams: StreamLimit
    backlog: Backlog
    diarization: bool = False  # the extra is not installed here
    owner_secret: bytes = b"test-owner-secret"
    storage: ObjectStorage | None = None
    spool: Spool = field(init=False)
    # Audio seconds and tenant of the sync requests being transcribed, as the Gateway's model
    # client counts them.
    in_flight: list[tuple[float, str]] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    asked: list[TranscribeOptions] = field(default_factory=list)  # each transcribe's options
    transcribing: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.spool = Spool.from_settings(self.settings, self.storage)

    async def transcribe(
        self,
        audio: Any,
        options: TranscribeOptions,
        on_segments: SegmentsFn | None = None,
    ) -> Transcript:
        seconds = len(audio) / self.settings.audio_sample_rate
        self.in_flight.append((seconds, (options.tenant or Tenant()).id))
        self.asked.append(options)
        self.transcribing.set()
        try:
            await self.release.wait()
        finally:
            self.in_flight.pop()
        return Transcript(
            text="ok", language="en", language_probability=1, duration=1, segments=[], model="m"
        )

    async def voice(self, audio: Any, tenant: Tenant | None = None) -> list[float] | None:
        """A stand-in embedding: how loud the clip is (silence: no speech)."""
        loudness = float(abs(audio).mean())
        return [loudness, 1.0] if loudness > 1e-3 else None

    async def submit(self, job_id: str) -> None:
        self.submitted.append(job_id)

    async def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"pools": {"TranscriberCPU": {"in_flight": len(self.in_flight)}}}


def make_backend(
    tmp_path: Path, clip: Path, storage: ObjectStorage | None = None, **values: Any
) -> StandIn:
    """Keys A, B and C, an admin key, and small limits to reach them cheaply; ``clip`` is
    copied under the allowed roots as audio/a.mp3 and shared/z.mp3. ``values``: more
    settings (buckets, with the ``storage`` that reaches them)."""
    audio_dir, shared = tmp_path / "audio", tmp_path / "shared"
    for folder in (audio_dir, shared):
        folder.mkdir()
    (audio_dir / "a.mp3").write_bytes(clip.read_bytes())
    (shared / "z.mp3").write_bytes(clip.read_bytes())
    settings = Settings(
        data_dir=tmp_path / "data",
        tmp_dir=tmp_path / "tmp",
        # Keys A and B name files under audio/ only, key C none; shared/ is the admin's.
        allowed_audio_roots=[audio_dir, shared],
        api_keys=[KEY_A, KEY_B, KEY_C],  # type: ignore[list-item]
        api_admin_keys=[ADMIN],  # type: ignore[list-item]
        api_key_audio_roots={KEY_A: [audio_dir], KEY_B: [audio_dir]},  # type: ignore[dict-item]
        max_queued_jobs_per_key=3,
        max_spooled_mb_per_key=1,
        sse_max_subscribers=1,
        sse_max_lifetime_sec=1,
        max_decoded_audio_mb=1,
        **values,
    )
    engine = open_engine(settings.database)
    in_flight: list[tuple[float, str]] = []
    return StandIn(
        settings,
        JobStore(engine),
        admission_for(settings, 1),
        StreamLimit(settings.sse_max_subscribers),
        # A snapshot per read: tests change the backlog between requests.
        Backlog(BacklogStore(engine), settings.max_backlog_audio_sec, lambda: in_flight, 0),
        in_flight=in_flight,
        storage=storage,
    )


def client(backend: StandIn, key: str | None = KEY_A) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=create_api(backend))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers)
