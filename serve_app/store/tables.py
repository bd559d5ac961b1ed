"""The durable schema: jobs, their events, and the ledger of published AMQP results.

Changes to it go through a migration in ``migrations/versions``; ``db.migrate`` applies them.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

published_results = Table(
    "published_results",
    metadata,
    Column("job_key", String(64), primary_key=True),
    Column("attachment_id", BigInteger, nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("success", Boolean, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False, index=True),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("source", String(8), nullable=False),  # http | amqp
    Column("status", String(16), nullable=False, index=True),
    # Scoped: "http:<owner>:<sha256 of the client's key>" or "amqp:<job key>".
    Column("idempotency_key", String(255), unique=True),
    # The API key that made the job (a hash of it); NULL for AMQP jobs and keyless services.
    Column("owner", String(64), index=True),
    Column("external_id", String(64)),  # the AMQP attachment_id
    Column("options", JSON, nullable=False),
    Column("audio_path", Text, nullable=False),
    Column("filename", String(255)),
    Column("spooled", Boolean, nullable=False, default=False),  # audio_path is ours to delete
    Column("audio_bytes", BigInteger),  # size of a spooled upload, for per-key quotas
    Column("model", String(100), nullable=False),
    Column("language", String(16)),
    Column("callback_url", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("duration", Float),
    Column("processed_s", Float, nullable=False, default=0.0),
    Column("error", Text),
    Column("result", JSON),
    # RESULTS_BUCKET: the format the job asked for (NULL: text), and where its transcript
    # and a JSON copy were written ({"transcript": "s3://...", "json": "s3://..."}).
    Column("response_format", String(16)),
    Column("result_objects", JSON),
    Column("webhook_status", String(16)),  # pending | delivered | failed
    Column("webhook_attempts", JSON),
    Column("webhook_next_at", DateTime(timezone=True), index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True), index=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Who is working on the job now (a replica's delivery of it), and until when.
    Column("lease_owner", String(64)),
    Column("lease_until", DateTime(timezone=True)),
    # Deliveries that started the job and never recorded an ending: the worker died.
    Column("unfinished", Integer, nullable=False, default=0, server_default="0"),
    # When an HTTP job was confirmed on the broker; NULL ones are the sweeper's to publish.
    Column("enqueued_at", DateTime(timezone=True)),
)

# Finished units of a long file: a retry or redelivery redoes only the others.
job_units = Table(
    "job_units",
    metadata,
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("start_sample", BigInteger, primary_key=True),
    Column("end_sample", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),  # the job attempt that transcribed it
    Column("result", JSON),  # dropped once the job is finished
    Column("created_at", DateTime(timezone=True), nullable=False),
)

job_events = Table(
    "job_events",
    metadata,
    # The SSE event id: increasing, so Last-Event-ID is "everything after this".
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), index=True),
    Column("type", String(16), nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# What each model replica reports of its speed, every few seconds while it lives: a pool's
# capacity is the sum over its replicas heard from lately (see serve_app.store.speeds).
replica_speeds = Table(
    "replica_speeds",
    metadata,
    Column("replica", String(128), primary_key=True),
    Column("pool", String(100), nullable=False),
    Column("device", String(16), nullable=False),
    Column("model", String(100), nullable=False),
    Column("rate", Float),  # audio seconds per busy second; NULL before any measurement
    Column("busy", Boolean, nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False),
)

# Made by the migration that creates it (random, once); read by every replica.
service_secrets = Table(
    "service_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(128), nullable=False),
)
