"""Who waits on a job (a running job's cancel watch, an SSE stream, the webhook loop) is woken
when it changes, instead of polling the store.

Writers call ``JobChanges.changed`` after their transaction commits, which wakes this process's
waiters; on PostgreSQL they also ``NOTIFY`` inside the transaction (``notify``), and a thread
per process ``LISTEN``s and wakes its waiters, so a cancel made through the Gateway reaches the
Ingest running the job at once. Notifications are hints: a woken waiter reads the store, and
every waiter still reads on a slow timer (``fallback``) in case one was lost (a listener that
reconnects wakes everyone). SQLite has no notifications between processes: there the timers
stay as fast as the polls they replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, cast

import psycopg
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection

logger = logging.getLogger(__name__)

CHANNEL = "whisper_jobs"
# A waiter's timer with notifications arriving: this many times its poll without them.
SLOWER = 10.0
_RECONNECT_S = (1.0, 30.0)  # the listener's backoff, first and most
_IDLE_CHECK_S = 5.0  # how often the listener looks up from waiting, to see if it must stop

# An event of a running job; its ending; an ending with a webhook to deliver.
Kind = Literal["changed", "finished", "callback"]


def notify(conn: Connection, kind: Kind, job_id: str) -> None:
    """Within a writer's transaction: PostgreSQL tells every listener once it commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_notify(CHANNEL, f"{kind}:{job_id}")))


@dataclass(eq=False)
class Watch:
    """One waiter's wake-up: set from any thread, awaited on the waiter's loop."""

    loop: asyncio.AbstractEventLoop
    finishes_only: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
            self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout_s: float) -> bool:
        """Until a change or ``timeout_s``; whether a change came."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self.event.clear()


class JobChanges:
    """This process's waiters on jobs, and (on PostgreSQL) the listener that wakes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}  # by job id; "": any job
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def fallback(self, poll_s: float) -> float:
        """How long a waiter waits without a wake-up before it reads anyway."""
        return poll_s * SLOWER if self.listening else poll_s

    @contextlib.contextmanager
    def watch(self, job_id: str | None = None, finishes_only: bool = False) -> Iterator[Watch]:
        """A wake-up for changes to ``job_id`` (``finishes_only``: only its ending, not its
        events; None: any job's ending with a webhook due), registered before the caller's
        first read so that no change falls between the read and the wait."""
        watch = Watch(asyncio.get_running_loop(), finishes_only)
        key = job_id or ""  # "": every job
        with self._lock:
            self._watches.setdefault(key, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                if (watches := self._watches.get(key)) is not None:
                    watches.discard(watch)
                    if not watches:
                        del self._watches[key]

    def changed(self, job_id: str, kind: Kind = "changed") -> None:
        """Wake the waiters this change concerns. Any thread."""
        with self._lock:
            if kind == "callback":
                watches = list(self._watches.get("", ()))
            else:
                watches = list(self._watches.get(job_id, ()))
        for watch in watches:
            if kind != "changed" or not watch.finishes_only:
                watch.wake()

    def _wake_all(self) -> None:
        with self._lock:
            watches = [w for ws in self._watches.values() for w in ws]
        for watch in watches:
            watch.wake()

    # --- PostgreSQL's notifications -------------------------------------------------------------

    def listen(self, engine: Engine) -> None:
        """Start listening (PostgreSQL only; once per process)."""
        if engine.dialect.name != "postgresql" or self._thread is not None:
            return
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._thread = threading.Thread(
            target=self._listen, args=(url,), name="job-changes", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_IDLE_CHECK_S + 1)

    def _listen(self, url: str) -> None:
        delay = _RECONNECT_S[0]
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if delay > _RECONNECT_S[0]:
                        logger.info("Listening for job changes again")
                    self._listening.set()
                    delay = _RECONNECT_S[0]
                    self._wake_all()  # what changed while nobody listened is read now
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_IDLE_CHECK_S):
                            kind, _, job_id = note.payload.partition(":")
                            if kind in ("changed", "finished", "callback"):
                                self.changed(job_id, cast(Kind, kind))
            except Exception as exc:
                if self._stop.is_set():
                    return
                logger.warning(
                    "Not listening for job changes (%s); waiters poll until it is back", exc
                )
            # Waiters read at their fast pace until the listener is back.
            self._listening.clear()
            self._wake_all()
            self._stop.wait(delay)
            delay = min(delay * 2, _RECONNECT_S[1])


def listening_changes(engine: Engine) -> JobChanges:
    """A replica's hub: listening where the store is PostgreSQL. Its thread is a daemon; it
    ends with the replica's process."""
    changes = JobChanges()
    changes.listen(engine)
    return changes
