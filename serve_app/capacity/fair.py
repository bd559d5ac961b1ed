"""Fair shares between tenants (API keys, the AMQP lane): whose work goes next when several
wait for the same thing (a place in a model replica's batch, a decoding lane).

Start-time fair queuing on audio seconds: each tenant has a virtual time, the audio served to
it divided by its weight, and the tenant with the least goes next; within a tenant, first come
first served. A tenant that was idle starts where the service's clock stands (the virtual
start of the work served last), so idling earns no credit to spend later in a burst: a key
that floods a replica gets its share, and a key that sends one clip meanwhile goes ahead of
the flood's next window instead of behind all of it. With one tenant this is first come
first served. ``FairGate`` lets waiters through a bounded number of slots in that order.
Plain logic: no Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

# Who a request's work is for when no key says (a service without API keys, an admin key):
# one tenant, so such a service schedules as before. The AMQP contract has no keys: its lane
# is one tenant.
ANYONE = "*"
AMQP = "amqp"


@dataclass(frozen=True)
class Tenant:
    """Who the work is for, and its share: a tenant of weight 2 gets twice the audio seconds
    of one of weight 1 while both wait."""

    id: str = ANYONE
    weight: float = 1.0


def tenant_of(owner: str | None, source: str = "http") -> Tenant:
    """A request's or job's tenant: the owner id of the key that sent it (an HMAC: never the
    key); AMQP jobs are the AMQP lane's."""
    if source == AMQP:
        return Tenant(AMQP)
    return Tenant(owner) if owner else Tenant()


def yield_to(
    tenant: str,
    running: Mapping[str, int],
    queued: Iterable[str],
    weight: Callable[[str], float] = lambda tenant: 1.0,
) -> str | None:
    """Whether a free job slot should go to another tenant than ``tenant``, whose job came
    for it: to one with a job queued and fewer jobs running than ``tenant`` for its weight
    (max-min fair shares of the slots); ties keep the slot. None: ``tenant`` takes it."""
    mine = running.get(tenant, 0) / weight(tenant)
    behind = [t for t in queued if t != tenant and running.get(t, 0) / weight(t) < mine]
    return min(behind, key=lambda t: running.get(t, 0) / weight(t), default=None)


class FairShare:
    """Virtual times of the tenants that waited lately; ``next`` picks, ``charge`` accounts."""

    def __init__(self) -> None:
        self._vtime: dict[str, float] = {}
        self._clock = 0.0  # the virtual time of the work served last

    def arrive(self, tenant: Tenant) -> None:
        """``tenant`` has work again after none waited: it starts where the service's clock
        stands (the start of the work served last), not behind on what it did not ask for,
        nor ahead on what it had before."""
        self._vtime[tenant.id] = max(self._vtime.get(tenant.id, self._clock), self._clock)

    def next(self, waiting: Iterable[str]) -> str:
        """Of the tenants with work waiting, the one to serve next (ties: the first given)."""
        return min(waiting, key=lambda t: self._vtime.get(t, self._clock))

    def charge(self, tenant: Tenant, cost: float) -> None:
        """``cost`` (audio seconds) of ``tenant``'s work was handed out."""
        start = self._vtime.get(tenant.id, self._clock)
        self._clock = max(self._clock, start)
        self._vtime[tenant.id] = start + cost / max(tenant.weight, 1e-6)

    def forget_idle(self, waiting: Iterable[str]) -> None:
        """Drop tenants with nothing waiting (they start level when they come back): keeps
        the table to the tenants of the moment."""
        keep = set(waiting)
        self._vtime = {t: v for t, v in self._vtime.items() if t in keep}


@dataclass(eq=False)
class _Waiter:
    tenant: Tenant
    cost: float
    granted: asyncio.Future[None]


class FairGate:
    """At most ``capacity`` holders at once (a diarizer that takes one file at a time, a
    replica's decoding lanes); while all are held, waiters are let in by fair share of their
    cost (audio seconds), first come first served within a tenant. Bounded: past
    ``max_waiting`` waiters, or ``max_waiting_per_tenant`` of one tenant, ``full(waiting,
    of_the_tenant)`` is raised at once instead of queueing without end (so one tenant's flood
    fills its own part of the queue, not everyone's)."""

    def __init__(
        self,
        capacity: int,
        full: Callable[[int, bool], Exception] = lambda waiting, mine: RuntimeError("full"),
        max_waiting: int | None = None,
        max_waiting_per_tenant: int | None = None,
    ) -> None:
        self._free = capacity
        self._full = full
        self._max_waiting = max_waiting
        self._max_per_tenant = max_waiting_per_tenant
        self._waiting: list[_Waiter] = []
        self._fair = FairShare()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, tenant: Tenant | None, cost: float) -> AsyncIterator[None]:
        tenant = tenant or Tenant()
        if self._free and not self._waiting:
            self._free -= 1
            self._fair.arrive(tenant)
            self._fair.charge(tenant, cost)
        else:
            await self._wait(tenant, cost)
        try:
            yield
        finally:
            self._free += 1
            self._grant()

    async def _wait(self, tenant: Tenant, cost: float) -> None:
        mine = sum(w.tenant.id == tenant.id for w in self._waiting)
        if self._max_per_tenant is not None and mine >= self._max_per_tenant:
            raise self._full(mine, True)
        if self._max_waiting is not None and len(self._waiting) >= self._max_waiting:
            raise self._full(len(self._waiting), False)
        if not mine:
            self._fair.arrive(tenant)
        waiter = _Waiter(tenant, cost, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif waiter.granted.done() and not waiter.granted.cancelled():
                self._free += 1  # let in just as its caller gave up: the slot goes on
                self._grant()
            raise

    def _grant(self) -> None:
        while self._free and self._waiting:
            tenant = self._fair.next(dict.fromkeys(w.tenant.id for w in self._waiting))
            waiter = next(w for w in self._waiting if w.tenant.id == tenant)
            self._waiting.remove(waiter)
            self._free -= 1
            self._fair.charge(waiter.tenant, waiter.cost)
            waiter.granted.set_result(None)
        self._fair.forget_idle(w.tenant.id for w in self._waiting)
