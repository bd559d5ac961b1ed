"""Async jobs: submit (202 at once), read status and results, list, cancel, stream events.

Request in: a multipart upload (spooled) or a JSON path under the allowed roots. The job is
recorded in the store, then queued on RabbitMQ; the queue side runs it and writes its events,
which ``/events`` replays to any number of subscribers, late or reconnecting."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError
from starlette.datastructures import UploadFile as StarletteUploadFile

from serve_app import formats
from serve_app.api import known_speakers
from serve_app.api.auth import KeyRing, KeysDep, ViewerDep
from serve_app.api.deps import Backend, BackendDep, LimitsDep
from serve_app.api.params import LIST_PARAMS, extra_options, form_values, is_form_extra
from serve_app.api.uploads import check_upload
from serve_app.errors import (
    AudioNotFoundError,
    ForbiddenError,
    InvalidOptionError,
    JobNotReadyError,
    PathNotAllowedError,
    RequestTooLargeError,
    UnsupportedFormatError,
)
from serve_app.jobs import exports, webhooks
from serve_app.jobs import service as job_service
from serve_app.media import objects, remote
from serve_app.media.audio import AudioLimits
from serve_app.media.storage import ObjectStorage
from serve_app.model_options import normalize_language, served_model, speaker_options
from serve_app.schemas import (
    FINISHED,
    Job,
    JobList,
    JobStatus,
    JobSubmission,
    ResponseFormat,
    TranscribeOptions,
)
from serve_app.store.jobs import NewJob, Viewer
from serve_app.transcription.pipeline import check_path

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

EVENT_POLL_S = 0.25
MAX_JSON_BODY_BYTES = 16 * 1024
_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **{
                            name: {"type": "array", "items": {"type": "string"}}
                            if name in LIST_PARAMS
                            else {"type": "string"}
                            for name in JobSubmission.model_fields
                            if name != "audio_file_path"
                        },
                    },
                }
            },
            "application/json": {"schema": JobSubmission.model_json_schema()},
        },
    }
}


@router.post("", status_code=202, response_model=Job, openapi_extra=_SUBMIT_BODY)
async def submit_job(
    request: Request, backend: BackendDep, limits: LimitsDep, viewer: ViewerDep, keys: KeysDep
) -> JSONResponse:
    settings = backend.settings
    upload, submission = await _read_submission(request)
    language = normalize_language(submission.language)
    options = TranscribeOptions(
        model=served_model(submission.model, settings),
        language=language,
        **extra_options(submission.model_dump(), language),
        task=submission.task,
        prompt=submission.prompt,
        word_timestamps=submission.word_timestamps,
        **speaker_options(
            submission.diarize,
            submission.min_speakers,
            submission.max_speakers,
            backend.diarization,
        ),
    )
    exports.check_format(submission.response_format, options.diarize)
    speakers_named = known_speakers.parse(
        submission.known_speaker_names, submission.known_speaker_references, options.diarize
    )
    if submission.callback_url:
        await webhooks.check_callback_url(
            submission.callback_url,
            settings.webhook_secret is not None,
            settings.webhook_allowed_hosts,
            owner=viewer.owner,
        )
    key = None
    if submission.idempotency_key is not None:
        key = scoped_idempotency_key(viewer.owner, submission.idempotency_key)
        existing = await asyncio.to_thread(backend.store.find_by_idempotency_key, key)
        if existing is not None:
            return _job_response(existing, 200)

    size = None
    if upload is not None:
        suffix, size = await check_upload(upload, limits)
    quota = job_service.Quota(settings.max_queued_jobs_per_key, settings.max_spooled_mb_per_key)
    await job_service.check_quota(backend.store, viewer.owner, size or 0, quota)
    if speakers_named:  # voices now: the job keeps them, not the clips
        named = await known_speakers.voices(speakers_named, backend, limits, keys.tenant(viewer))
        options = options.model_copy(update={"known_speakers": named})
    if upload is not None:
        audio = await asyncio.to_thread(backend.spool.save, upload.file, suffix)
        filename, spooled = upload.filename, True
    else:
        audio, filename = await _own_source(
            submission.audio_file_path, keys, viewer, limits, backend.storage
        )
        spooled = False

    new = NewJob(
        source="http",
        audio_path=audio,
        options=options,
        model=options.model or settings.whisper_model,
        spooled=spooled,
        filename=filename,
        callback_url=submission.callback_url,
        idempotency_key=key,
        owner=viewer.owner,
        audio_bytes=size,
        response_format=submission.response_format,
    )
    job, created = await job_service.submit(backend.store, new, backend.submit, backend.spool)
    if not created:  # the same key won a race with this request
        return _job_response(job, 200)
    [job] = await _estimated(backend, [job])
    return _job_response(job, 202)


@router.get("", response_model=JobList)
async def list_jobs(
    backend: BackendDep,
    viewer: ViewerDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> JobList:
    page, next_cursor = await asyncio.to_thread(
        backend.store.list_jobs, status, limit, cursor, viewer
    )
    return JobList(data=await _estimated(backend, page), next_cursor=next_cursor)


@router.get("/{job_id}", response_model=Job)
async def get_job(job_id: str, backend: BackendDep, viewer: ViewerDep) -> Job:
    job = await asyncio.to_thread(backend.store.get, job_id, True, viewer)
    [job] = await _estimated(backend, [job])
    return job


@router.get("/{job_id}/result")
async def get_result(
    job_id: str, backend: BackendDep, viewer: ViewerDep, format: ResponseFormat = "json"
) -> Response:
    job = await asyncio.to_thread(backend.store.get, job_id, True, viewer)
    if job.status != "completed" or job.result is None:
        detail = f": {job.error}" if job.error else ""
        raise JobNotReadyError(f"Job {job_id} is {job.status}; it has no result{detail}")
    if format == "diarized_json" and not job.options.diarize:
        raise InvalidOptionError(
            f"Job {job_id} was not diarized; submit it with diarize=true", param="format"
        )
    body = formats.render(
        job.result, format, words=job.options.word_timestamps, logprobs=job.options.logprobs
    )
    return Response(content=body, media_type=formats.MEDIA_TYPES[format])


@router.delete("/{job_id}", response_model=Job)
async def cancel_job(job_id: str, backend: BackendDep, viewer: ViewerDep) -> Job:
    return await job_service.cancel(backend.store, job_id, viewer, backend.spool)


async def _existing_job(job_id: str, backend: BackendDep, viewer: ViewerDep) -> str:
    # 404 before the stream starts, for unknown jobs and other keys' jobs alike.
    await asyncio.to_thread(backend.store.get, job_id, False, viewer)
    return job_id


async def _stream_slot(backend: BackendDep) -> AsyncIterator[None]:
    """Held until the stream ends: open streams are capped so they cannot starve the API."""
    with backend.streams.take():
        yield


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job_id: Annotated[str, Depends(_existing_job)],
    _slot: Annotated[None, Depends(_stream_slot)],
    backend: BackendDep,
    last_event_id: Annotated[int | None, Header(ge=0)] = None,
    after: Annotated[int | None, Query(ge=0, description="Same as Last-Event-ID")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: queued, running, progress, segment, then completed, failed or
    cancelled. Each event's id is what Last-Event-ID takes to resume after it."""
    cursor = last_event_id or after or 0
    loop = asyncio.get_running_loop()
    # Clients resume with Last-Event-ID, so a bounded stream loses nothing.
    closes_at = loop.time() + backend.settings.sse_max_lifetime_sec
    changes = backend.store.changes
    with changes.watch(job_id) as changed:
        while loop.time() < closes_at:
            events = await asyncio.to_thread(backend.store.events_after, job_id, cursor)
            for event in events:
                yield ServerSentEvent(data=event.data, event=event.type, id=str(event.id))
                cursor = event.id
                if event.type in FINISHED:
                    return
            if not events and await asyncio.to_thread(backend.store.status, job_id) is None:
                return  # deleted by retention while someone was listening
            # Woken by the job's next event (see store.changes), or reading anyway.
            await changed.wait(min(changes.fallback(EVENT_POLL_S), closes_at - loop.time()))


# --- helpers ------------------------------------------------------------------------------------


async def _read_submission(
    request: Request,
) -> tuple[StarletteUploadFile | None, JobSubmission]:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if not isinstance(upload, StarletteUploadFile):
                raise InvalidOptionError("A multipart job needs its audio in 'file'", param="file")
            fields: dict[str, Any] = {
                k: v for k, v in form.items() if k != "file" and v != "" and not is_form_extra(k)
            }
            fields |= form_values(form)
            return upload, JobSubmission.model_validate({**fields, "audio_file_path": "upload"})
        if content_type.startswith("application/json"):
            return None, JobSubmission.model_validate_json(await _small_body(request))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None
    except ValueError:  # the body is not JSON at all
        raise InvalidOptionError("The body is not valid JSON") from None
    raise UnsupportedFormatError(
        "Send the job as multipart/form-data (with 'file') or application/json "
        "(with 'audio_file_path')"
    )


async def _small_body(request: Request) -> bytes:
    """A JSON job names a path: a few KB, whatever MAX_FILE_SIZE_MB allows for uploads."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY_BYTES:
            raise RequestTooLargeError(
                f"A JSON job body may be at most {MAX_JSON_BODY_BYTES // 1024} KB"
            )
    return bytes(body)


def scoped_idempotency_key(owner: str | None, key: str) -> str:
    """Client keys live in their owner's namespace, apart from the internal ``amqp:`` keys."""
    return f"http:{owner or '-'}:{hashlib.sha256(key.encode()).hexdigest()}"


async def _own_source(
    raw: str, keys: KeyRing, viewer: Viewer, limits: AudioLimits, storage: ObjectStorage | None
) -> tuple[str, str]:
    """(where the job reads its audio, its file name) of a JSON job's audio_file_path: a
    server file (``_own_path``) or an s3:// object (``_own_object``)."""
    if objects.is_object_name(raw):
        ref = await _own_object(raw, keys.audio_grants(viewer), viewer, limits, storage)
        return str(ref), ref.name
    path = _own_path(raw, keys, viewer, limits)
    return str(path), path.name


async def _own_object(
    raw: str,
    grants: list[objects.Grant],
    viewer: Viewer,
    limits: AudioLimits,
    storage: ObjectStorage | None,
) -> objects.ObjectRef:
    """An object the caller may read, with the rules of ``_own_path``: admin keys anywhere in
    ALLOWED_AUDIO_BUCKETS, other keys in theirs only, and the answer for an object outside
    them the one for a missing object. Its size is checked now, without reading it."""
    ref = objects.ObjectRef.parse(raw)  # a malformed name says nothing about any object
    if not grants or storage is None:
        raise ForbiddenError(
            "This API key may not name s3:// objects: upload the audio instead "
            "(or ask the operator for buckets for this key)"
        )
    try:
        objects.check_granted(ref, grants)
        await asyncio.to_thread(remote.check_object, storage, ref, limits)
    except (AudioNotFoundError, PathNotAllowedError):
        if viewer.everyone:
            raise
        raise AudioNotFoundError(
            f"No audio object this key may read at {ref}: objects must lie in its buckets"
        ) from None
    return ref


def _own_path(raw: str, keys: KeyRing, viewer: Viewer, limits: AudioLimits) -> Path:
    """A server file the caller may read: admin keys anywhere under ALLOWED_AUDIO_ROOTS, other
    keys under their own roots only (the spool is the service's own). A key's answer for a
    file outside its roots is the one for a missing file, so it learns nothing of others'."""
    roots = keys.audio_roots(viewer)
    if not roots:
        raise ForbiddenError(
            "This API key may not name server files: upload the audio instead "
            "(or ask the operator for audio roots for this key)"
        )
    try:
        return check_path(raw, roots, limits)
    except (AudioNotFoundError, PathNotAllowedError):
        # Admin keys get the details; a malformed path says nothing about any file.
        if viewer.everyone or not raw.startswith("/") or "\0" in raw:
            raise
        raise AudioNotFoundError(
            f"No audio file this key may read at {raw!r}: files must lie in its audio roots"
        ) from None


async def _estimated(backend: Backend, jobs: list[Job]) -> list[Job]:
    """Unfinished jobs with their estimated start (queued ones) and completion."""
    etas = await backend.backlog.estimates([j.id for j in jobs if j.status not in FINISHED])
    return [
        job.model_copy(
            update={
                "estimated_start": eta.start if job.status == "queued" else None,
                "estimated_completion": eta.completion,
            }
        )
        if (eta := etas.get(job.id))
        else job
        for job in jobs
    ]


def _job_response(job: Job, status: Literal[200, 202]) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content=job.model_dump(mode="json"),
        headers={"Location": job.links["self"]},
    )
