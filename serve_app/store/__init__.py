"""Durable state shared by replicas: jobs and their events, and published AMQP results.

SQLite under DATA_DIR by default (one node); DATABASE_URL pointing to PostgreSQL for a cluster.
"""

from serve_app.store.backlog import BacklogStore, PoolSpeed
from serve_app.store.changes import JobChanges, listening_changes
from serve_app.store.claims import Busy, Claim, ClaimStore
from serve_app.store.db import make_engine, migrate, open_engine
from serve_app.store.jobs import JobStore
from serve_app.store.ledger import ResultLedger
from serve_app.store.outbox import Outbox
from serve_app.store.retention import FinishedJob, RetentionStore
from serve_app.store.secrets import service_secret
from serve_app.store.units import UnitStore
from serve_app.store.webhooks import WebhookClaim, WebhookStore

__all__ = [
    "BacklogStore",
    "Busy",
    "Claim",
    "ClaimStore",
    "FinishedJob",
    "JobChanges",
    "JobStore",
    "Outbox",
    "PoolSpeed",
    "ResultLedger",
    "RetentionStore",
    "UnitStore",
    "WebhookClaim",
    "WebhookStore",
    "listening_changes",
    "make_engine",
    "migrate",
    "open_engine",
    "service_secret",
]
