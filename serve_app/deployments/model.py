"""The model-holding deployment: one Whisper model per replica, inference off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

from ray import serve

from serve_app import logcontext, metrics
from serve_app.capacity.drain import SPEED
from serve_app.capacity.speed import ReplicaId, SpeedMeter, SpeedReporter
from serve_app.deployments import telemetry
from serve_app.deployments.logs import share_serve_handlers
from serve_app.errors import InferenceError, ServiceError
from serve_app.logcontext import JobLog
from serve_app.media.audio import AudioArray
from serve_app.model.calls import FileCall, UnitCall
from serve_app.model.decoding import DecodePolicy, Decoding
from serve_app.model.transcriber import Transcriber
from serve_app.model_options import served_model
from serve_app.schemas import Segment, TranscribeOptions, Transcript
from serve_app.settings import load_settings
from serve_app.store import BacklogStore, open_engine

logger = logging.getLogger("ray.serve")
Call = TypeVar("Call", FileCall, UnitCall)

# A replica whose model keeps failing on audio that decoded fine is replaced by Serve.
_UNHEALTHY_AFTER_FAILURES = 3


# One class for every pool (app.py names each): what a pool reserves on its nodes, the
# requests a replica takes and its autoscaling are sized in the YAML files per installation.
@serve.deployment(
    name="TranscriberCPU",
    # Far above the longest unit of work (a 240 s unit took 14-27 s on 2 cores with base):
    # a replica being scaled down finishes what it holds.
    graceful_shutdown_timeout_s=300,
)
class TranscriberDeployment:
    def __init__(self, device: str | None = None) -> None:
        share_serve_handlers()  # the batcher's and the quality guard's lines
        telemetry.install()
        self._settings = load_settings()
        self._device = device or self._settings.whisper_device
        started = time.monotonic()
        self._default = Transcriber.load(self._settings.whisper_model, self._settings, device)
        loaded = time.monotonic()
        self.meter = SpeedMeter()
        self.meter.seed(*self._default.warm_up())
        logger.info("Warmed up %s in %.1f s", self._default.name, time.monotonic() - loaded)
        self._loaded(self._default.name, time.monotonic() - started)
        self._failures = 0
        self._reporter = self._start_reporting()
        self._decoding = Decoding(
            DecodePolicy(self._settings.whisper_cross_batch), self._default.lanes
        )

    def _start_reporting(self) -> SpeedReporter | None:
        """The replica's speed, for the Gateway's admission and the jobs' estimates; without
        a store the model still serves, and the service estimates nothing."""
        context = serve.get_replica_context()
        who = ReplicaId(
            replica=context.replica_id.unique_id,
            pool=context.deployment,
            device=self._device,
            model=self._default.name,
        )
        try:
            store = BacklogStore(open_engine(self._settings.database))
        except Exception as exc:
            logger.warning("No store for this replica's speed reports: %r", exc)
            return None
        reporter = SpeedReporter(self.meter, store, who)
        reporter.start()
        return reporter

    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown (a downscale): capacity goes at once.
        reporter: SpeedReporter | None = getattr(self, "_reporter", None)
        if reporter is not None:
            reporter.stop()

    @serve.multiplexed(max_num_models_per_replica=3)
    async def _model(self, model_id: str) -> Transcriber:
        if model_id == self._default.name:
            return self._default
        started = time.monotonic()
        loaded: Transcriber = await asyncio.to_thread(
            Transcriber.load, model_id, self._settings, self._device
        )
        self._loaded(model_id, time.monotonic() - started)
        return loaded

    def _loaded(self, model: str, seconds: float) -> None:
        metrics.observe("whisper_model_load_seconds", seconds, model=model, device=self._device)

    @contextlib.contextmanager
    def _measured(self, model: str, audio: AudioArray) -> Iterator[None]:
        """One model call: the replica's speed, and its metrics once it is done."""
        seconds = self._seconds(audio)
        # Said before the work, so a replica that dies mid-call has named what it was doing.
        logger.info("Decoding %.1f s of audio with %s", seconds, model)
        started = time.monotonic()
        with self.meter.measure(seconds):
            yield
        took = time.monotonic() - started
        labels = {"model": model, "device": self._device}
        metrics.inc("whisper_audio_seconds_total", seconds, **labels)
        metrics.observe("whisper_transcription_seconds", took, **labels)
        if seconds > 0:
            metrics.observe("whisper_real_time_factor", took / seconds, **labels)

    async def transcribe(self, call: FileCall, job: JobLog | None = None) -> Transcript:
        """A whole (short) file, decoded as ``model.decoding`` says. ``job``: which job the
        call is for, named in this replica's log lines about it."""
        with logcontext.about(job):
            transcriber = await self._for(call.options)
            with self._measured(transcriber.name, call.audio):
                result: Transcript = await self._infer(
                    self._decoding.file, transcriber, self._in_share(call), asynchronous=True
                )
                return result

    async def transcribe_stream(
        self, call: FileCall, job: JobLog | None = None
    ) -> AsyncIterator[Segment | Transcript]:
        """Like transcribe, yielding each segment as it is decoded and the transcript last."""
        with logcontext.about(job):
            transcriber = await self._for(call.options)
            items = transcriber.stream(call.audio, call.options)
            with self._measured(transcriber.name, call.audio):
                while (item := await self._infer(next, items, None)) is not None:
                    yield item

    async def transcribe_unit(self, call: UnitCall, job: JobLog | None = None) -> Transcript:
        """One work unit of a long file: its speech windows decoded in batches. The log line
        names the part (``call.label``) and says what this replica decoded and how fast."""
        with logcontext.about(job):
            transcriber = await self._for(call.options)
            call = self._in_share(call)
            async with self._decoding.unit_lane(call, self._seconds(call.audio)) as lane:
                started = time.monotonic()  # the wait for a lane is not decoding time
                with self._measured(transcriber.name, call.audio):
                    result: Transcript = await self._infer(
                        self._decoding.unit, transcriber, call, lane, asynchronous=True
                    )
            logger.info(
                "Decoded %s: %.1f s of audio in %d windows, %.1f s",
                call.label,
                self._seconds(call.audio),
                len(call.windows),
                time.monotonic() - started,
            )
            return result

    def _in_share(self, call: Call) -> Call:
        """The call as this replica schedules it: in its tenant's fair share, or with
        FAIR_SHARES=false first come first served (every call in one share)."""
        if self._settings.fair_shares:
            return call
        return replace(call, options=call.options.model_copy(update={"tenant": None}))

    def _seconds(self, audio: AudioArray) -> float:
        return len(audio) / self._settings.audio_sample_rate

    async def detect_language(
        self, audio: AudioArray, allowed: list[str] | None = None, job: JobLog | None = None
    ) -> tuple[str, float]:
        with logcontext.about(job):
            transcriber = await self._for(TranscribeOptions(languages=allowed))
            found: tuple[str, float] = await self._infer(
                transcriber.detect_language, audio, allowed
            )
            return found

    async def _for(self, options: TranscribeOptions) -> Transcriber:
        name = served_model(options.model or serve.get_multiplexed_model_id(), self._settings)
        transcriber: Transcriber = await self._model(name)
        transcriber.check_options(options)
        return transcriber

    async def _infer(self, fn: Callable[..., Any], *args: Any, asynchronous: bool = False) -> Any:
        """``fn(*args)`` off the event loop (or awaited, when ``asynchronous``); a failure
        that is not the request's fault counts against the replica's health."""
        try:
            result = await (fn(*args) if asynchronous else asyncio.to_thread(fn, *args))
        except ServiceError:
            raise
        except Exception as exc:
            self._failures += 1
            metrics.inc("whisper_decode_failures_total", stage="model")
            logger.exception("Inference failed (%d in a row)", self._failures)
            raise InferenceError("Inference failed on this audio") from exc
        self._failures = 0
        return result

    def record_autoscaling_stats(self) -> dict[str, float]:
        """This replica's measured speed (audio seconds per second), which the pools'
        autoscaling (``serve_app.deployments.autoscaling``) divides the backlog by."""
        return {SPEED: self.meter.rate or 0.0}

    async def ping(self) -> bool:
        """Nothing to do: a call queued at a pool scaled to zero makes Serve start a replica."""
        return True

    def check_health(self) -> None:
        if self._failures >= _UNHEALTHY_AFTER_FAILURES:
            raise RuntimeError(f"{self._failures} inference failures in a row")
