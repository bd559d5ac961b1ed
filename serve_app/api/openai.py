"""OpenAI-compatible routes: /v1/audio/transcriptions, /v1/audio/translations, /v1/models."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from serve_app import formats
from serve_app.api import known_speakers
from serve_app.api.auth import KeysDep, ViewerDep
from serve_app.api.deps import BackendDep, LimitsDep
from serve_app.api.params import FormExtrasDep, extra_options
from serve_app.api.streaming import stream_transcription
from serve_app.api.uploads import decode_upload
from serve_app.errors import InvalidOptionError
from serve_app.model_options import (
    OPENAI_MODEL_ALIAS,
    normalize_language,
    served_model,
    speaker_options,
)
from serve_app.schemas import (
    MAX_PROMPT_CHARS,
    MAX_SPEAKERS,
    ModelCard,
    ModelList,
    ResponseFormat,
    TranscribeOptions,
    VerboseTranscription,
)

router = APIRouter(prefix="/v1", tags=["openai"])

Granularity = Literal["segment", "word"]
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "The transcript, in the requested response_format",
        "content": {
            "application/json": {"schema": VerboseTranscription.model_json_schema()},
            "text/plain": {},
            "text/vtt": {},
        },
    },
    400: {"description": "Empty file"},
    413: {"description": "File too large or audio too long"},
    415: {"description": "Unsupported or undecodable audio"},
    422: {"description": "Invalid parameters"},
    429: {"description": "The service is behind; Retry-After says when to come back"},
}


@router.post("/audio/transcriptions", responses=_RESPONSES)
async def create_transcription(
    backend: BackendDep,
    limits: LimitsDep,
    viewer: ViewerDep,
    keys: KeysDep,
    extras: FormExtrasDep,
    file: Annotated[UploadFile, File(description="Audio file")],
    model: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form(description="ISO-639-1; empty to detect")] = None,
    prompt: Annotated[str | None, Form(max_length=MAX_PROMPT_CHARS)] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    timestamp_granularities: Annotated[
        list[Granularity] | None, Form(alias="timestamp_granularities[]")
    ] = None,
    stream: Annotated[
        bool, Form(description="Server-Sent Events: transcript.text.delta, then .done")
    ] = False,
    diarize: Annotated[
        bool, Form(description="Who spoke when: speakers on segments (diarized_json implies it)")
    ] = False,
    min_speakers: Annotated[int | None, Form(ge=1, le=MAX_SPEAKERS)] = None,
    max_speakers: Annotated[int | None, Form(ge=1, le=MAX_SPEAKERS)] = None,
) -> Response:
    # Cheap checks first: a bad parameter should not cost a decode.
    diarize = diarize or response_format == "diarized_json"
    if diarize and stream:
        raise InvalidOptionError("diarize cannot stream: speakers are known once the file is done")
    speakers = speaker_options(diarize, min_speakers, max_speakers, backend.diarization)
    language = normalize_language(language)
    tenant = keys.tenant(viewer)
    options = TranscribeOptions(
        model=served_model(model, backend.settings),
        language=language,
        **extra_options(extras, language),
        prompt=prompt,
        temperature=temperature,
        word_timestamps=response_format == "verbose_json"
        and "word" in (timestamp_granularities or []),
        **speakers,
        tenant=tenant,
    )
    if options.logprobs and response_format != "json" and not stream:
        raise InvalidOptionError(
            "logprobs come in json responses and streamed events: response_format=json",
            param="include",
        )
    speakers_named = known_speakers.parse(
        extras.get(known_speakers.NAMES), extras.get(known_speakers.REFERENCES), diarize
    )
    await backend.backlog.admit(options.tenant)  # 429 before the upload costs a decode
    if speakers_named:
        named = await known_speakers.voices(speakers_named, backend, limits, tenant)
        options = options.model_copy(update={"known_speakers": named})
    if stream:
        decoded, held = await decode_upload(file, limits, backend.admission)
        return stream_transcription(backend, decoded.samples, options, held)
    return await _respond(backend, limits, file, options, response_format)


@router.post("/audio/translations", responses=_RESPONSES)
async def create_translation(
    backend: BackendDep,
    limits: LimitsDep,
    viewer: ViewerDep,
    keys: KeysDep,
    file: Annotated[UploadFile, File(description="Audio file")],
    model: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form(max_length=MAX_PROMPT_CHARS)] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
) -> Response:
    if response_format == "diarized_json":
        raise InvalidOptionError(
            "Translations are not diarized; use /v1/audio/transcriptions", param="response_format"
        )
    options = TranscribeOptions(
        model=served_model(model, backend.settings),
        task="translate",
        prompt=prompt,
        temperature=temperature,
        tenant=keys.tenant(viewer),
    )
    await backend.backlog.admit(options.tenant)
    return await _respond(backend, limits, file, options, response_format)


@router.get("/models")
async def list_models(backend: BackendDep) -> ModelList:
    names = [*backend.settings.served_models, OPENAI_MODEL_ALIAS]
    return ModelList(data=[ModelCard(id=name) for name in names])


async def _respond(
    backend: BackendDep,
    limits: LimitsDep,
    file: UploadFile,
    options: TranscribeOptions,
    response_format: ResponseFormat,
) -> Response:
    decoded, held = await decode_upload(file, limits, backend.admission)
    with held:
        transcript = await backend.transcribe(decoded.samples, options)
    body = formats.render(
        transcript, response_format, words=options.word_timestamps, logprobs=options.logprobs
    )
    return Response(content=body, media_type=formats.MEDIA_TYPES[response_format])
