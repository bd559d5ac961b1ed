"""The diarization deployment: senko loaded once per replica, one file at a time, in its own
pool (own replicas, own autoscaling) so that it runs beside transcription, not in its way."""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from serve_app import logcontext, metrics
from serve_app.capacity.fair import FairGate, Tenant
from serve_app.deployments import telemetry
from serve_app.deployments.logs import share_serve_handlers
from serve_app.errors import QuotaExceededError, ServiceBusyError
from serve_app.logcontext import JobLog
from serve_app.media.audio import AudioArray
from serve_app.settings import load_settings
from serve_app.transcription.diarizer import SpeakerDiarizer
from serve_app.transcription.speakers import Turn

logger = logging.getLogger("ray.serve")


# Not in serve_config.yaml (a service without the extra has no such deployment): started by
# the first diarize=true request, stopped after ten idle minutes. ``serve_app.app`` sets what
# it reserves (DIARIZE_NUM_CPUS: senko keeps a core busy, so Ray must not place a model
# replica on it) and how many calls may queue for it (DIARIZE_MAX_QUEUED). They queue here, in
# fair shares between keys (serve_app.capacity.fair), one key's at most
# DIARIZE_MAX_QUEUED_PER_KEY.
@serve.deployment(
    name="Diarizer",
    graceful_shutdown_timeout_s=300,
    autoscaling_config={
        "min_replicas": 0,
        "initial_replicas": 0,
        "max_replicas": 1,
        "target_ongoing_requests": 1,
        "downscale_delay_s": 600,
    },
)
class DiarizerDeployment:
    def __init__(self) -> None:
        share_serve_handlers()
        telemetry.install()
        settings = load_settings()
        started = time.monotonic()
        self._diarizer = SpeakerDiarizer.load(settings.diarize_device, settings.audio_sample_rate)
        took = time.monotonic() - started
        logger.info("Loaded the speaker diarizer in %.1f s", took)
        device = settings.diarize_device
        metrics.observe("whisper_model_load_seconds", took, model="senko", device=device)
        self._sample_rate = settings.audio_sample_rate
        self._min_similarity = settings.diarize_min_voice_similarity
        # One file at a time: senko keeps the cores busy.
        self._fair = settings.fair_shares
        self._one_at_a_time = FairGate(
            1,
            _full,
            max_waiting=settings.diarize_max_queued,
            max_waiting_per_tenant=settings.diarize_max_queued_per_key if self._fair else None,
        )

    def _seconds(self, audio: AudioArray) -> float:
        return len(audio) / self._sample_rate

    def _share(self, tenant: Tenant | None) -> Tenant | None:
        """Whose share a call counts in: its tenant's, or everyone's one (FAIR_SHARES=false)."""
        return tenant if self._fair else None

    async def voice(
        self, audio: AudioArray, tenant: Tenant | None = None, job: JobLog | None = None
    ) -> list[float] | None:
        """A known speaker's reference clip as a voice embedding (None: no speech in it)."""
        with logcontext.about(job):
            async with self._one_at_a_time.slot(self._share(tenant), self._seconds(audio)):
                return await asyncio.to_thread(self._diarizer.voice, audio)

    async def diarize(
        self,
        audio: AudioArray,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        known: dict[str, list[float]] | None = None,
        tenant: Tenant | None = None,
        job: JobLog | None = None,
    ) -> list[Turn]:
        with logcontext.about(job):
            async with self._one_at_a_time.slot(self._share(tenant), self._seconds(audio)):
                started = time.monotonic()
                work = asyncio.ensure_future(
                    asyncio.to_thread(
                        self._diarizer.diarize,
                        audio,
                        min_speakers,
                        max_speakers,
                        known,
                        self._min_similarity,
                    )
                )
                try:
                    turns = await asyncio.shield(work)
                except asyncio.CancelledError:
                    # The caller gave up (its transcription failed, or a cancel). The thread
                    # cannot be stopped: the next file waits for it, not beside it.
                    logger.info("Diarization no longer wanted; letting its thread end")
                    await asyncio.wait({work})
                    raise
            logger.info(
                "Diarized %.1f s of audio: %d turns of %d speakers in %.1f s",
                self._seconds(audio),
                len(turns),
                len({t.speaker for t in turns}),
                time.monotonic() - started,
            )
            return turns


def _full(waiting: int, of_the_key: bool) -> ServiceBusyError:
    if of_the_key:
        return QuotaExceededError(
            f"This API key has {waiting} files waiting for diarization; try again once one is done",
            30,
        )
    return ServiceBusyError(
        f"The speaker diarizer has {waiting} files waiting; try again shortly", 30
    )
