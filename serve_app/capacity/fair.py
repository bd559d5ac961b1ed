"""Fair shares between tenants (API keys, the AMQP lane): whose work goes next when several
wait for the same thing (a place in a model replica's batch, a decoding lane).

Start-time fair queuing on audio seconds: each tenant has a virtual time, the audio served to
it divided by its weight, and the tenant with the least goes next; within a tenant, first come
first served. A tenant that was idle starts at the least virtual time of those waiting (or
where the service's clock stands), so idling earns no credit to spend later in a burst: a key
that floods a replica gets its share, and a key that sends one clip meanwhile goes ahead of
the flood's next window instead of behind all of it. With one tenant this is first come
first served. Plain logic: no Ray, no asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable
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


class FairShare:
    """Virtual times of the tenants that waited lately; ``next`` picks, ``charge`` accounts."""

    def __init__(self) -> None:
        self._vtime: dict[str, float] = {}
        self._clock = 0.0  # the virtual time of the work served last

    def arrive(self, tenant: Tenant, waiting: Iterable[str]) -> None:
        """``tenant`` has work again; ``waiting``: the tenants with work waiting already. An
        idle tenant starts level with them, not behind on what it did not ask for."""
        others = [self._vtime.get(t, self._clock) for t in waiting if t != tenant.id]
        floor = min(others, default=self._clock)
        self._vtime[tenant.id] = max(self._vtime.get(tenant.id, floor), floor)

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
