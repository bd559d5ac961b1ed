"""Background work of the queue side: deliver due webhooks, delete what retention allows.

Plain asyncio over the store; several replicas may run it at once (webhooks are leased, purges
are idempotent)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

import httpx

from serve_app import spool, webhooks
from serve_app.schemas import Job
from serve_app.settings import Settings
from serve_app.store import JobStore
from serve_app.store.jobs import now

logger = logging.getLogger(__name__)

WEBHOOK_POLL_S = 0.5
RETENTION_EVERY_S = 60.0
LEDGER_PURGE_EVERY_S = 3600.0


class Housekeeper:
    def __init__(
        self, store: JobStore, settings: Settings, purge_ledger: Callable[[], int] | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._purge_ledger = purge_ledger
        self._secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self._settings.webhook_timeout_sec) as client:
            last_retention = last_ledger = float("-inf")
            loop = asyncio.get_running_loop()
            while True:
                with contextlib.suppress(Exception):
                    await self.deliver_webhooks(client)
                if loop.time() - last_retention >= RETENTION_EVERY_S:
                    last_retention = loop.time()
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(self.apply_retention)
                if self._purge_ledger and loop.time() - last_ledger >= LEDGER_PURGE_EVERY_S:
                    last_ledger = loop.time()
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(self._purge_ledger)
                await asyncio.sleep(WEBHOOK_POLL_S)

    async def deliver_webhooks(self, client: httpx.AsyncClient) -> int:
        lease = timedelta(seconds=self._settings.webhook_timeout_sec + 5)
        due = await asyncio.to_thread(self._store.claim_webhooks, lease)
        await asyncio.gather(*(self._deliver(client, job) for job in due))
        return len(due)

    async def _deliver(self, client: httpx.AsyncClient, job: Job) -> None:
        assert job.webhook is not None
        body = webhook_body(job)
        delivered, attempt = await webhooks.deliver(
            client, job.webhook.url, job.id, body, self._secret
        )
        count = len(job.webhook.attempts) + 1
        retry_at = None
        if not delivered and count < self._settings.webhook_max_attempts:
            retry_at = now() + webhooks.retry_delay(count, self._settings.webhook_backoff_sec)
        if not delivered:
            logger.warning(
                "Webhook for job %s failed (attempt %d): %s",
                job.id,
                count,
                attempt.error or attempt.status_code,
            )
        await asyncio.to_thread(
            self._store.record_webhook_attempt, job.id, attempt, delivered, retry_at
        )

    def apply_retention(self) -> int:
        """Delete jobs finished longer ago than JOB_RETENTION_HOURS, their audio and events,
        and spool files no job needs any more. Blocking."""
        spool_dir = self._settings.spool
        purged = self._store.purge_finished(timedelta(hours=self._settings.job_retention_hours))
        for job in purged:
            if job.spooled:
                spool.remove(job.audio_path, spool_dir)
        orphans = spool.sweep_orphans(spool_dir, self._store.spooled_paths())
        if purged or orphans:
            logger.info("Retention: %d jobs and %d orphan files deleted", len(purged), orphans)
        return len(purged)


def webhook_body(job: Job) -> bytes:
    """The final job JSON, as GET /v1/jobs/{id} shows it."""
    return job.model_dump_json().encode()
