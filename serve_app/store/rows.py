"""Rows of the jobs table as the API's ``Job``, list cursors, and UTC time as stored."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from sqlalchemy.engine import RowMapping

from serve_app.capacity.fair import tenant_of
from serve_app.errors import InvalidOptionError
from serve_app.schemas import Job, TranscribeOptions, Transcript, WebhookAttempt, WebhookState


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def to_job(row: RowMapping, with_result: bool, position: int | None) -> Job:
    duration = row["duration"]
    processed = float(row["processed_s"] or 0.0)
    if row["status"] == "completed":
        progress = 1.0
    elif duration:
        progress = round(min(processed / duration, 1.0), 4)
    else:
        progress = 0.0
    webhook = None
    if row["callback_url"]:
        webhook = WebhookState(
            url=row["callback_url"],
            status=row["webhook_status"] or "pending",
            attempts=[WebhookAttempt.model_validate(a) for a in row["webhook_attempts"] or []],
        )
    return Job(
        id=row["id"],
        source=row["source"],
        external_id=row["external_id"],
        status=row["status"],
        model=row["model"],
        language=row["language"],
        # Whose fair share its work counts against: the tenant is never stored with it.
        options=TranscribeOptions.model_validate(row["options"]).model_copy(
            update={"tenant": tenant_of(row.get("owner"), row["source"])}
        ),
        filename=row["filename"],
        audio_path=row["audio_path"],
        spooled=bool(row["spooled"]),
        attempts=row["attempts"],
        progress=progress,
        duration=duration,
        processed_seconds=processed,
        queue_position=position,
        error=row["error"],
        created_at=aware(row["created_at"]),
        started_at=aware(row["started_at"]),
        finished_at=aware(row["finished_at"]),
        webhook=webhook,
        result=Transcript.model_validate(row["result"]) if with_result and row["result"] else None,
        response_format=row.get("response_format"),
        result_objects=row.get("result_objects"),
    )


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), job_id
    except ValueError:
        raise InvalidOptionError("Invalid cursor", param="cursor") from None
