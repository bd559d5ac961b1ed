"""Fair shares of the job slots between tenants (API keys, the AMQP lane).

Jobs wait on the broker first come first served, and each worker slot takes the next message;
so one key's hundred queued jobs would put every other key's job behind all of them. Instead,
a job whose tenant runs more jobs than another tenant with a job waiting (for their weights)
gives its slot up: its message goes round again through the lane's retry queue, uncounted
(``Outcome.DEFERRED``), and the slot takes the next message, until the waiting tenant's job
comes up. Ties keep the slot, so a lone tenant, or tenants level with each other, never wait
on this. Model time is shared by tenant in the replicas (``serve_app.capacity.fair``); this
gets each tenant's jobs a slot to run in. Plain asyncio over the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from serve_app.capacity.fair import tenant_of, yield_to
from serve_app.store import BacklogStore, Claim
from serve_app.store.rows import now


@dataclass
class FairTurns:
    store: BacklogStore
    # A queued job is waited for this long after it was queued, at most: past that its message
    # may be lost (the outbox sends an HTTP job's again), and nobody yields to it any more.
    max_wait_s: float = 600.0
    weight: Callable[[str], float] = field(default=lambda tenant: 1.0)

    async def ahead(self, claim: Claim) -> str | None:
        """The tenant the claimed job should give its slot to; None: it runs now."""
        tenant = tenant_of(claim.owner, claim.source).id
        since = now() - timedelta(seconds=self.max_wait_s)
        running, queued = await asyncio.to_thread(self.store.tenant_load, since)
        return yield_to(tenant, running, queued, self.weight)
