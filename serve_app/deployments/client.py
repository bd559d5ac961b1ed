"""The Ray side of the transcription ports: calls to the model pools (the pool picked, woken
or watched; a caller that stops waiting cancels the replica's work) and to the Diarizer, with
Ray's failures made domain errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar, cast

from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator
from ray.serve.schema import DeploymentStatusOverview

from serve_app import logcontext
from serve_app.capacity.fair import Tenant
from serve_app.capacity.pools import SERVING, Pool, PoolRouter
from serve_app.errors import (
    NoReplicaError,
    ReplicaUnavailableError,
    ServiceBusyError,
    ServiceError,
)
from serve_app.media.audio import AudioArray
from serve_app.model.calls import FileCall, UnitCall
from serve_app.schemas import Segment, TranscribeOptions, Transcript
from serve_app.transcription.port import SegmentsFn
from serve_app.transcription.speakers import Turn

logger = logging.getLogger(__name__)

T = TypeVar("T")

_WATCH_EVERY_S = 2.0
# A queued job's client looks less often while the pools are settled: `serve.status()` builds
# every deployment's full details, in Serve's controller and again in the caller (looking
# every 10 s instead of 2 took the Ingest's idle draw from 24-33 to 14 ms of CPU per second,
# bench/job_rate). A change it misses meanwhile (a sleeping pool woken by the drain policy) only
# sends a few more jobs to a pool that serves; with no pool serving it looks every 2 s.
_SETTLED_WATCH_S = 10.0
_POLL_S = 0.5
# How long a call waits for the first look at the pools before routing without it (every
# pool taken as serving). Queued jobs wait longer: sent blind, they land on pools at zero,
# and each such request makes Serve start a replica there, whichever pool the drain policy
# prefers; a fresh replica's first `serve.status()` can take seconds on a busy node.
_FIRST_LOOK_S = 5.0
_FIRST_LOOK_QUEUED_S = 60.0


class ModelClient:
    """The model port (``serve_app.transcription.port``) over the model pools' handles.

    ``can_wait``: whether a caller may wait for a pool that is down to come back (queued
    jobs, which wake one sleeping pool at a time: the drain policy sizes the pools for them)
    or must be told at once (HTTP requests); see ``serve_app.capacity.pools``."""

    def __init__(
        self,
        pools: list[DeploymentHandle[Any]],
        weights: list[float],
        can_wait: bool = True,
        start_wait_s: float = 0.0,
    ) -> None:
        self.router = PoolRouter(
            [
                Pool(handle.deployment_name, handle, weight)
                for handle, weight in zip(pools, weights, strict=True)
            ],
            one_wake_at_a_time=can_wait,
        )
        self._can_wait = can_wait
        # How long a caller that cannot wait for good waits for a pool that is starting.
        self._start_wait_s = start_wait_s
        self._watching: asyncio.Task[None] | None = None
        self._looked = asyncio.Event()
        self._waking: set[asyncio.Task[None]] = set()

    async def transcribe(self, call: FileCall) -> Transcript:
        result: Transcript = await self._call("transcribe", call.options.model, call)
        return result

    async def transcribe_unit(self, call: UnitCall) -> Transcript:
        result: Transcript = await self._call("transcribe_unit", call.options.model, call)
        return result

    async def detect_language(
        self, audio: AudioArray, model: str | None, allowed: list[str] | None = None
    ) -> tuple[str, float]:
        found: tuple[str, float] = await self._call("detect_language", model, audio, allowed)
        return found

    async def _call(self, method: str, model: str | None, *args: Any) -> Any:
        pool = await self._pool()
        with self.router.hold(pool), _replica_errors(pool.name):
            handle = pool.target.options(multiplexed_model_id=model or "")
            # The model replica's lines about this call name the job (serve_app.logcontext).
            response = getattr(handle, method).remote(*args, job=logcontext.current())
            return await self._unless_pool_lost(pool, _cancelling(response))

    async def _unless_pool_lost(self, pool: Pool[DeploymentHandle[Any]], work: Awaitable[T]) -> T:
        """For callers that cannot wait: give up (503) if the pool stops serving while the
        request waits. A request sent just before its replicas' node died waits in Serve's
        queue for a replacement that may take minutes; one that was running on them has
        failed already."""
        if self._can_wait:
            return await work
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=_WATCH_EVERY_S)
            if done:
                return task.result()
            if pool.state not in SERVING:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise self.router.no_replica()

    async def _pool(self) -> Pool[DeploymentHandle[Any]]:
        """The pool for the next call, by the policy in ``serve_app.capacity.pools``: with none
        serving, sleeping pools are woken, and a caller that can wait polls until one
        serves instead of queueing on a pool that may never start; one that cannot polls
        while a pool is starting, for ``start_wait_s`` at most."""
        if self._watching is None:  # started here: the replica's event loop runs by now
            self._watching = asyncio.create_task(self._watch(), context=logcontext.detached())
        if not self._looked.is_set():
            try:
                await asyncio.wait_for(
                    self._looked.wait(), _FIRST_LOOK_QUEUED_S if self._can_wait else _FIRST_LOOK_S
                )
            except TimeoutError:
                logger.warning("No status of the model pools yet; routing without it")
        waiting = False
        deadline = time.monotonic() + self._start_wait_s
        while True:
            for sleeper in self.router.to_wake():
                self._wake(sleeper)
            try:
                return self.router.pick()
            except NoReplicaError:
                if not self._can_wait and (
                    time.monotonic() >= deadline or not self.router.starting()
                ):
                    raise
                if not waiting:
                    logger.warning("No model replica is running; waiting for one")
                    waiting = True
                await asyncio.sleep(_POLL_S if not self._can_wait else _WATCH_EVERY_S)

    def _wake(self, pool: Pool[DeploymentHandle[Any]]) -> None:
        """A call nobody waits for: queued at a pool scaled to zero, it makes Serve start a
        replica while the request that found every pool busy goes elsewhere."""
        logger.info("Waking %s (scaled to zero): no pool serves, or all are busy", pool.name)

        async def ping() -> None:
            try:
                await pool.target.ping.remote()
            except Exception as exc:
                logger.warning("Could not wake %s: %r", pool.name, exc)

        task = asyncio.create_task(ping())
        self._waking.add(task)
        task.add_done_callback(self._waking.discard)

    async def _watch(self) -> None:
        """Keep the router's view of each pool (running, asleep, down) current."""
        app_name = serve.get_replica_context().app_name
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                app = status.applications.get(app_name)
                deployments = app.deployments if app else {}
                self.router.observe(
                    {
                        name: (
                            str(d.status.value),
                            running_replicas(d),
                            d.message or "",
                            coming_replicas(d),
                        )
                        for name, d in deployments.items()
                    }
                )
                self._looked.set()
            except Exception as exc:  # the controller is restarting: keep the last view
                logger.warning("Could not read the model pools' status: %r", exc)
            settled = self._can_wait and self.router.settled()
            await asyncio.sleep(_SETTLED_WATCH_S if settled else _WATCH_EVERY_S)

    async def stream(self, call: FileCall, on_segments: SegmentsFn) -> Transcript:
        result: Transcript | None = None
        pool = await self._pool()
        with self.router.hold(pool), _replica_errors(pool.name):
            handle = pool.target.options(multiplexed_model_id=call.options.model or "", stream=True)
            stream = cast(
                DeploymentResponseGenerator[Any],
                handle.transcribe_stream.remote(call, job=logcontext.current()),
            )

            async def consume() -> Transcript | None:
                last: Transcript | None = None
                async for item in stream:
                    if isinstance(item, Segment):
                        on_segments([item])
                    else:
                        last = item
                return last

            result = await self._unless_pool_lost(pool, consume())
        if result is None:
            raise ReplicaUnavailableError("Model replica ended the stream without a transcript")
        return result


class DiarizerClient:
    """The speaker port over the Diarizer's handle."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def diarize(self, audio: AudioArray, options: TranscribeOptions) -> list[Turn]:
        with _replica_errors(self._handle.deployment_name):
            known = {s.name: s.voice for s in options.known_speakers or []}
            response = self._handle.diarize.remote(
                audio,
                options.min_speakers,
                options.max_speakers,
                known or None,
                options.tenant,
                job=logcontext.current(),
            )
            turns: list[Turn] = await _cancelling(cast(DeploymentResponse[Any], response))
            return turns

    async def voice(self, audio: AudioArray, tenant: Tenant | None = None) -> list[float] | None:
        with _replica_errors(self._handle.deployment_name):
            response = self._handle.voice.remote(audio, tenant, job=logcontext.current())
            found: list[float] | None = await _cancelling(cast(DeploymentResponse[Any], response))
            return found


def running_replicas(deployment: DeploymentStatusOverview | None) -> int:
    """Replicas of a deployment, as ``serve.status()`` has it, in the RUNNING state."""
    return _replicas_in(deployment, ("RUNNING",))


def coming_replicas(deployment: DeploymentStatusOverview) -> int:
    """Replicas running or on their way (starting, updating, recovering)."""
    return _replicas_in(deployment, ("STARTING", "UPDATING", "RECOVERING", "RUNNING"))


def _replicas_in(deployment: DeploymentStatusOverview | None, states: tuple[str, ...]) -> int:
    if deployment is None:
        return 0
    return sum(n for state, n in deployment.replica_states.items() if state in states)


async def _cancelling(response: DeploymentResponse[Any]) -> Any:
    """The call's result; a caller that stops waiting (a cancel, a sibling's failure) cancels
    the call on its replica too, instead of leaving it to work for nobody."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()  # type: ignore[no-untyped-call]
        raise


@contextlib.contextmanager
def _replica_errors(pool: str) -> Iterator[None]:
    try:
        yield
    except ServiceError:
        raise  # a domain error raised in the replica keeps its type across Ray
    except BackPressureError:
        # The pool's queue is full (DIARIZE_MAX_QUEUED for the Diarizer): later, not never.
        raise ServiceBusyError(f"{pool} is at its queue limit; try again shortly", 30) from None
    except Exception as exc:  # replica died, unreachable, overloaded: worth a retry
        # Ray's errors name actors, nodes and replicas: they go to the log, not to clients.
        logger.warning("Model replica in %s failed: %r", pool, exc)
        raise ReplicaUnavailableError(
            "A model replica failed while transcribing; the request may be retried"
        ) from exc
