"""The Whisper-Local RabbitMQ contract: names, arguments, message parsing and building.

Existing producers and consumers declare the same exchanges and queues; any difference in a
name or an argument makes their declarations fail with PRECONDITION_FAILED, so these values are
the seed's, exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from serve_app.errors import MalformedRequestError, validation_problems
from serve_app.retry import Growth, RetryPolicy
from serve_app.schemas import (
    QueuedTranscriptionRequest,
    QueuedTranscriptionResult,
    ResultSegment,
    Transcript,
)

REQUEST_EXCHANGE = "whisper_exchange"
REQUEST_QUEUE = "whisper_transcriptions"
REQUEST_ROUTING_KEY = "transcription.request"
RESULT_EXCHANGE = "whisper_results_exchange"
RESULT_QUEUE = "whisper_results"
RESULT_ROUTING_KEY = "transcription.result"
RETRY_EXCHANGE = "whisper_retry_exchange"
RETRY_QUEUE = "whisper_retry_queue"
RETRY_ROUTING_KEY = "transcription.retry"
RETRY_TTL_MS = 5000
RETRY_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-message-ttl": RETRY_TTL_MS,
    "x-dead-letter-exchange": REQUEST_EXCHANGE,
    "x-dead-letter-routing-key": REQUEST_ROUTING_KEY,
}
# Messages nobody can be answered for (not JSON, no attachment_id) are parked here.
REJECTED_QUEUE = "whisper_rejected"
MAX_RETRIES = 2  # 3 attempts in all
# A job's tries (a request's or an HTTP job's), each after the retry queue's TTL.
JOB_RETRIES = RetryPolicy(MAX_RETRIES + 1, RETRY_TTL_MS / 1000, Growth.FIXED)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RETRY_HEADER = "x-retry-count"
REJECT_REASON_HEADER = "x-reject-reason"
# Headers RabbitMQ adds when dead-lettering; a republish carrying them would look like a
# dead-letter cycle with no rejection, which RabbitMQ drops silently.
DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


class UnanswerableMessage(Exception):
    """No result can be addressed for this message: it goes to the parking queue."""


@dataclass(frozen=True)
class ParsedMessage:
    request: QueuedTranscriptionRequest
    body: dict[str, Any]


def parse_request(raw: bytes) -> ParsedMessage:
    """Parse a request body; MalformedRequestError still carries what is needed to answer."""
    body = _load_json(raw)
    if not isinstance(body, dict):
        raise UnanswerableMessage("body is not a JSON object")
    attachment_id = body.get("attachment_id")
    if not isinstance(attachment_id, int) or isinstance(attachment_id, bool):
        raise UnanswerableMessage("no usable attachment_id (an integer is required)")
    if not INT64_MIN <= attachment_id <= INT64_MAX:
        # The ledger keeps ids as 64-bit integers: one past them could be answered but never
        # recorded as answered, so every redelivery would answer it again.
        raise MalformedRequest(body, "Malformed request: attachment_id is outside 64-bit range")
    try:
        request = QueuedTranscriptionRequest.model_validate(body)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise MalformedRequest(body, f"Malformed request: {problems}") from None
    if not _writable(body):
        # It could be read, but neither a retry nor a result could carry it: answer it now.
        raise MalformedRequest(body, "Malformed request: text with a lone surrogate escape")
    return ParsedMessage(request=request, body=body)


def _load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UnanswerableMessage("body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise UnanswerableMessage(f"body is not JSON ({exc.msg})") from None
    except (ValueError, RecursionError):
        # Python's own limits: integers over 4300 digits, nesting past the recursion limit.
        raise UnanswerableMessage("body is JSON past what the service reads") from None


def _writable(body: dict[str, Any]) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class MalformedRequest(MalformedRequestError):
    """A request with a usable attachment_id but bad other fields: answered with an error."""

    def __init__(self, body: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.attachment_id: int = body["attachment_id"]
        batch = body.get("import_batch_id")
        self.import_batch_id = (
            batch if isinstance(batch, int) and not isinstance(batch, bool) else None
        )


def retry_count(request: QueuedTranscriptionRequest, headers: dict[str, Any]) -> int:
    """The body's count wins (the seed sets both); the header covers producers that set one."""
    if "retry_count" in request.model_fields_set:
        return request.retry_count
    header = headers.get(RETRY_HEADER)
    return header if isinstance(header, int) and header >= 0 else 0


def job_key(request: QueuedTranscriptionRequest) -> str:
    """Identity of a job across redeliveries and retries (retry_count is not part of it)."""
    fields = {
        "attachment_id": request.attachment_id,
        "audio_file_path": request.audio_file_path,
        "language": request.language or "",
        "import_batch_id": request.import_batch_id,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def retry_body(body: dict[str, Any], count: int) -> bytes:
    return json.dumps({**body, "retry_count": count}, ensure_ascii=False).encode()


def retry_headers(headers: dict[str, Any], count: int) -> dict[str, Any]:
    kept = {k: v for k, v in headers.items() if k not in DEATH_HEADERS}
    return {**kept, RETRY_HEADER: count}


def success_result(
    request: QueuedTranscriptionRequest,
    transcript: Transcript,
    attempts: int = 1,
    objects: dict[str, str] | None = None,
) -> QueuedTranscriptionResult:
    return QueuedTranscriptionResult(
        attachment_id=request.attachment_id,
        texto=transcript.text,
        duration=round(transcript.duration, 3),
        model=transcript.model,
        success=True,
        import_batch_id=request.import_batch_id,
        language=transcript.language,
        segments=[
            ResultSegment(id=s.id, start=s.start, end=s.end, text=s.text.strip(), speaker=s.speaker)
            for s in transcript.segments
        ],
        attempts=attempts,
        result_objects=objects,
    )


def error_result(
    attachment_id: int,
    import_batch_id: int | None,
    model: str,
    message: str,
    attempts: int | None = None,
) -> QueuedTranscriptionResult:
    return QueuedTranscriptionResult(
        attachment_id=attachment_id,
        texto="",
        duration=0,
        model=model,
        success=False,
        import_batch_id=import_batch_id,
        error_message=message,
        attempts=attempts,
    )


def result_message_id(key: str) -> str:
    return f"whisper-result-{key[:32]}"


# --- The service's own queue for HTTP jobs (not in the seed) ----------------------------------
# Accepted HTTP jobs travel through RabbitMQ so that they survive restarts, with the same retry
# rules as the seed's; their results go to the job store, never to whisper_results.

JOB_EXCHANGE = "whisper_jobs_exchange"
JOB_QUEUE = "whisper_jobs"
JOB_ROUTING_KEY = "job.run"
JOB_RETRY_EXCHANGE = "whisper_jobs_retry_exchange"
JOB_RETRY_QUEUE = "whisper_jobs_retry"
JOB_RETRY_ROUTING_KEY = "job.retry"
JOB_RETRY_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-message-ttl": RETRY_TTL_MS,
    "x-dead-letter-exchange": JOB_EXCHANGE,
    "x-dead-letter-routing-key": JOB_ROUTING_KEY,
}


def job_message(job_id: str, retry_count: int = 0) -> bytes:
    return json.dumps({"job_id": job_id, "retry_count": retry_count}).encode()


def parse_job_message(raw: bytes) -> tuple[str, int]:
    """(job_id, retry_count) of a message on the jobs queue."""
    body = _load_json(raw)
    job_id = body.get("job_id") if isinstance(body, dict) else None
    if not isinstance(job_id, str) or not job_id:
        raise UnanswerableMessage("job message has no job_id")
    count = body.get("retry_count", 0)
    return job_id, count if isinstance(count, int) and count >= 0 else 0
