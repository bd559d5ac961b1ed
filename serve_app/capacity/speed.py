"""How fast one model replica transcribes: audio seconds done per second of being busy.

Busy time is wall time with at least one request in flight, so requests decoded together in
one batch count once: the figure is what the replica gets through, not what one request sees.
Old work fades with a half-life, so the figure follows a model switch or a noisy neighbour.
The model deployment feeds a meter and a ``SpeedReporter`` writes its figure to the store
every few seconds, from a thread of its own (``serve_app.store.backlog``). No Ray here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve_app.store.backlog import BacklogStore

logger = logging.getLogger(__name__)


class SpeedMeter:
    def __init__(
        self, half_life_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.half_life_s = half_life_s
        self._clock = clock
        self._last = clock()
        self._in_flight = 0
        self._audio_s = 0.0
        self._busy_s = 0.0
        self.audio_total_s = 0.0  # undecayed, for the log
        self._seed: float | None = None
        # The event loop measures, the reporter's thread reads.
        self._lock = threading.Lock()

    def seed(self, audio_s: float, wall_s: float) -> None:
        """A first figure (the warm-up's), given until real work has been measured."""
        if audio_s > 0 and wall_s > 0:
            self._seed = audio_s / wall_s

    @contextmanager
    def measure(self, audio_s: float) -> Iterator[None]:
        """One request's work; its audio counts only if it is done (a failure is no speed)."""
        with self._lock:
            self._advance()
            self._in_flight += 1
        done = False
        try:
            yield
            done = True
        finally:
            with self._lock:
                self._advance()
                self._in_flight -= 1
                if done:
                    self._audio_s += audio_s
                    self.audio_total_s += audio_s

    @property
    def rate(self) -> float | None:
        """Audio seconds per busy second; None before anything was measured."""
        with self._lock:
            self._advance()
            if self.audio_total_s <= 0 or self._busy_s <= 0:
                return self._seed
            return self._audio_s / self._busy_s

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def _advance(self) -> None:
        now = self._clock()
        elapsed = max(now - self._last, 0.0)
        decay = 0.5 ** (elapsed / self.half_life_s)
        self._audio_s *= decay
        self._busy_s = self._busy_s * decay + (elapsed if self._in_flight else 0.0)
        self._last = now


@dataclass(frozen=True)
class ReplicaId:
    replica: str
    pool: str
    device: str
    model: str


class SpeedReporter:
    """Writes a meter's figure to the store every ``every_s`` until stopped. A store that
    fails is logged and tried again next time: the model keeps serving without it."""

    def __init__(
        self, meter: SpeedMeter, store: BacklogStore, who: ReplicaId, every_s: float = 5.0
    ) -> None:
        self._meter = meter
        self._store = store
        self._who = who
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="speed-reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The replica is going: its capacity stops counting at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._every_s)  # no report lands after the withdrawal
        try:
            self._store.forget(self._who.replica)
        except Exception as exc:
            logger.warning("Could not withdraw this replica's speed: %r", exc)

    def report(self) -> None:
        who = self._who
        self._store.report(
            who.replica, who.pool, who.device, who.model, self._meter.rate, self._meter.busy
        )

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.report()
                failing = False
            except Exception as exc:
                if not failing:  # once per outage, not every few seconds
                    logger.warning("Could not report this replica's speed: %r", exc)
                failing = True
            self._stop.wait(self._every_s)
