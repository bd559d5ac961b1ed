"""Holding a job's claim for one delivery: take it (waiting on a dead holder, not on a live
one), keep it renewed, let go of it.

Renewals run on a thread pool of their own, and may have database connections of their own:
the shared default executor (or the shared connection pool) may be full of slow work (an
upload's decode, hanging DNS, a store call stuck on a lock), and a renewal that waits behind it
lets the lease run out, so a second delivery runs the job beside this one. Plain asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from serve_app.store import Busy, Claim, ClaimStore

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LeaseLostError(Exception):
    """Our claim ran out and another delivery took the job: this one must not finish it."""


class ClaimWaitError(Exception):
    """The job's claim stayed with others past the wait's cap: the delivery is handed back."""


@dataclass(frozen=True)
class HeldElsewhere:
    """A live delivery (one seen renewing its lease) works on the job: it hands the outcome
    on, and its message comes back if its worker dies, so this copy may be settled."""

    holder: str | None


@dataclass
class Leases:
    claims: ClaimStore
    lease_s: float
    busy_poll_s: float = 2.0
    # A waiting copy sees a live holder renew within a third of a lease, or a dead one's lease
    # run out within one lease; holders that keep changing hand it back after this long.
    max_wait_s: float | None = None
    # Where renewals go: the same store by default, or one with connections of its own.
    renewals: ClaimStore | None = None
    _renewal_threads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="leases")
    )

    def __post_init__(self) -> None:
        self._renewer = self.renewals or self.claims

    async def take(
        self, job_id: str, holder: str, leave_to_live: bool = True
    ) -> Claim | HeldElsewhere | None:
        """The job's claim (None: no such job). While another delivery holds it: wait until
        its lease runs out (its worker died) or it lets go, or, with ``leave_to_live``, until
        it renews (it is alive: HeldElsewhere). A copy that cannot be sure its message is not
        the holder's own waits for the claim (up to the cap) instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.max_wait_s or 3 * self.lease_s)
        seen: tuple[str | None, datetime | None] | None = None
        while True:
            got = await asyncio.to_thread(self.claims.claim, job_id, holder, self.lease_s)
            if not isinstance(got, Busy):
                return got
            if leave_to_live and seen is not None and _renewed(seen, got):
                return HeldElsewhere(got.holder)
            if seen is None:
                logger.info("Job %s is held by another delivery; waiting for it", job_id)
            seen = (got.holder, got.until)
            if loop.time() >= deadline:
                raise ClaimWaitError(f"job {job_id} stayed claimed by others; handing it back")
            await asyncio.sleep(min(max(got.wait_s, 0.1), self.busy_poll_s))

    @contextlib.asynccontextmanager
    async def held(self, claim: Claim) -> AsyncIterator[None]:
        """Keep the claim alive while the body runs; if it is lost, stop the body and raise
        LeaseLostError. The claim is released at the end either way."""
        task = asyncio.current_task()
        assert task is not None
        lost = asyncio.Event()

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_s / 3)
                try:
                    ours = await self._renewing(
                        self._renewer.renew, claim.job_id, claim.holder, self.lease_s
                    )
                except Exception:  # the store may be back before the lease runs out
                    logger.exception("Could not renew the claim on job %s", claim.job_id)
                    continue
                if not ours:
                    logger.error("Lost the claim on job %s; stopping this delivery", claim.job_id)
                    lost.set()
                    task.cancel()
                    return

        renewing = asyncio.create_task(renew())
        try:
            yield
        except asyncio.CancelledError:
            if not lost.is_set():
                raise
            task.uncancel()
            raise LeaseLostError(f"claim on job {claim.job_id} lost") from None
        finally:
            renewing.cancel()
            try:
                await asyncio.to_thread(self.claims.release, claim.job_id, claim.holder)
            except Exception:  # it runs out by itself; the next delivery waits that long
                logger.exception("Could not release the claim on job %s", claim.job_id)

    async def still_held(self, claim: Claim) -> bool:
        return await self._renewing(self._renewer.holds, claim.job_id, claim.holder)

    async def _renewing(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._renewal_threads, call, *args)


def _renewed(seen: tuple[str | None, datetime | None], now: Busy) -> bool:
    holder, until = seen
    return (
        now.holder is not None
        and now.holder == holder
        and until is not None
        and now.until is not None
        and now.until > until
    )
