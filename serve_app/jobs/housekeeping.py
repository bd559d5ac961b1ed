"""Background work of the queue side: deliver due webhooks, publish accepted jobs the
Gateway never got onto the broker (the outbox), delete what retention allows.

Plain asyncio over the store; several replicas may run it at once (webhooks are leased, purges
are idempotent). Deliveries, retention and the ledger purge are separate loops, and each
delivery is its own task, so a slow or hostile receiver holds up nothing but its own delivery,
and that one only until WEBHOOK_TIMEOUT_SEC."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from typing import Any

import httpx

from serve_app import metrics
from serve_app.errors import ServiceError
from serve_app.jobs import webhooks
from serve_app.media.spool import Spool
from serve_app.schemas import Job
from serve_app.settings import Settings
from serve_app.store import JobStore, Outbox, RetentionStore, WebhookClaim, WebhookStore

logger = logging.getLogger(__name__)

WEBHOOK_POLL_S = 0.5
RETENTION_EVERY_S = 60.0
LEDGER_PURGE_EVERY_S = 3600.0
OUTBOX_EVERY_S = 5.0
MAX_DELIVERIES = 8
# A lease outlasts the delivery deadline by this much: time to record the attempt.
LEASE_MARGIN_S = 30.0


class Housekeeper:
    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        purge_ledger: Callable[[], int] | None = None,
        *,
        webhook_store: WebhookStore | None = None,
        retention_every_s: float = RETENTION_EVERY_S,
        max_deliveries: int = MAX_DELIVERIES,
        publish_job: Callable[[str], Awaitable[None]] | None = None,
        spool: Spool | None = None,
    ) -> None:
        self._store = store
        # The job store's own engine: both tables live in one database.
        self._webhooks = webhook_store or WebhookStore(store.engine)
        self._retention = RetentionStore(store.engine)
        self._settings = settings
        self._spool = spool or Spool(settings.spool)
        self._purge_ledger = purge_ledger
        self._outbox = Outbox(store.engine)
        self._publish_job = publish_job
        self._retention_every_s = retention_every_s
        self._max_deliveries = max_deliveries
        self._secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        self._lease = timedelta(seconds=settings.webhook_timeout_sec + LEASE_MARGIN_S)

    async def run(self) -> None:
        async with webhooks.make_client() as client, asyncio.TaskGroup() as loops:
            loops.create_task(self.deliver_forever(client))
            retention = self._retention_every_s
            loops.create_task(_every(retention, _in_thread(self.apply_retention), "Retention"))
            if self._purge_ledger is not None:
                purge = self._purge_ledger
                loops.create_task(_every(LEDGER_PURGE_EVERY_S, _in_thread(purge), "Ledger purge"))
            if self._publish_job is not None:
                loops.create_task(_every(OUTBOX_EVERY_S, self.sweep_outbox, "Outbox sweep"))

    async def sweep_outbox(self) -> int:
        """Publish accepted jobs left unpublished past the grace (the Gateway died, or its
        client hung up, between recording and publishing). Returns how many went out."""
        assert self._publish_job is not None
        grace = timedelta(seconds=self._settings.outbox_grace_sec)
        sent = 0
        for job_id in await asyncio.to_thread(self._outbox.unsent, grace):
            logger.warning("Job %s was accepted but never queued; queueing it now", job_id)
            await self._publish_job(job_id)
            sent += 1
        return sent

    async def deliver_forever(self, client: httpx.AsyncClient) -> None:
        """Keep up to max_deliveries deliveries going, claiming more as slots free up; jobs
        are claimed only when a slot is free, so no lease runs down while it waits."""
        in_flight: dict[str, asyncio.Task[None]] = {}
        changes = self._store.changes
        async with asyncio.TaskGroup() as deliveries:
            # Woken by an ending with a webhook (see store.changes); retries fall due by the
            # clock, and are claimed at the next look (every WEBHOOK_POLL_S without notices).
            with changes.watch() as finished:
                while True:
                    for job_id in [j for j, task in in_flight.items() if task.done()]:
                        del in_flight[job_id]
                    free = self._max_deliveries - len(in_flight)
                    for claim in await self._claim(free, list(in_flight)):
                        task = deliveries.create_task(self._deliver(client, claim))
                        in_flight[claim.job.id] = task
                    # At most one look per WEBHOOK_POLL_S, however many jobs end.
                    await asyncio.sleep(WEBHOOK_POLL_S)
                    await finished.wait(changes.fallback(WEBHOOK_POLL_S) - WEBHOOK_POLL_S)

    async def deliver_webhooks(self, client: httpx.AsyncClient) -> int:
        """One round: claim what is due now, deliver it all, and return how many."""
        claims = await self._claim(self._max_deliveries, ())
        await asyncio.gather(*(self._deliver(client, claim) for claim in claims))
        return len(claims)

    async def _claim(self, limit: int, exclude: Collection[str]) -> list[WebhookClaim]:
        if limit <= 0:
            return []
        try:
            return await asyncio.to_thread(self._webhooks.claim_due, self._lease, limit, exclude)
        except Exception:
            logger.exception("Could not claim due webhooks")
            return []

    async def _deliver(self, client: httpx.AsyncClient, claim: WebhookClaim) -> None:
        # A task of its own: whatever goes wrong here must not end the delivery loop.
        try:
            await self._deliver_one(client, claim)
        except Exception:
            logger.exception("Webhook delivery for job %s failed", claim.job.id)

    async def _deliver_one(self, client: httpx.AsyncClient, claim: WebhookClaim) -> None:
        job = claim.job
        assert job.webhook is not None
        delivered, attempt = await webhooks.deliver(
            client,
            job.webhook.url,
            job.id,
            webhook_body(job),
            self._secret,
            allowed_hosts=self._settings.webhook_allowed_hosts,
            timeout_s=self._settings.webhook_timeout_sec,
            owner=claim.owner,
        )
        count = len(job.webhook.attempts) + 1
        retry_in = None
        retries = self._settings.webhook_retries
        if not delivered and not retries.is_final(count):
            retry_in = timedelta(seconds=retries.delay_s(count))
        outcome = "delivered" if delivered else "retry" if retry_in is not None else "failed"
        metrics.inc("whisper_webhook_deliveries_total", outcome=outcome)
        if not delivered:
            logger.warning(
                "Webhook for job %s failed (attempt %d): %s",
                job.id,
                count,
                attempt.error or attempt.status_code,
            )
        applied = await asyncio.to_thread(
            self._webhooks.record_attempt, job.id, claim.token, attempt, delivered, retry_in
        )
        if not applied:
            logger.warning("Webhook attempt for job %s not recorded: its lease was lost", job.id)

    def apply_retention(self) -> int:
        """Delete jobs finished longer ago than JOB_RETENTION_HOURS, their audio and events,
        and spool files no job needs any more. Blocking."""
        purged = self._retention.purge_finished(timedelta(hours=self._settings.job_retention_hours))
        for job in purged:
            if job.spooled:
                try:
                    self._spool.remove(job.audio_path)
                except ServiceError as exc:  # the job is gone: the orphan sweep gets it later
                    logger.warning("Could not delete %s of job %s: %s", job.audio_path, job.id, exc)
        orphans = self._spool.sweep_orphans(self._retention.spooled_paths())
        if purged or orphans:
            logger.info("Retention: %d jobs and %d orphan files deleted", len(purged), orphans)
        return len(purged)


async def _every(interval_s: float, work: Callable[[], Awaitable[Any]], what: str) -> None:
    """Run work now and every interval_s; a failure is logged and the next round tries again."""
    while True:
        try:
            await work()
        except Exception:
            logger.exception("%s failed; trying again in %.0f s", what, interval_s)
        await asyncio.sleep(interval_s)


def _in_thread(work: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    """Blocking store work, off the event loop."""
    return lambda: asyncio.to_thread(work)


def webhook_body(job: Job) -> bytes:
    """The final job JSON, as GET /v1/jobs/{id} shows it."""
    return job.model_dump_json().encode()
