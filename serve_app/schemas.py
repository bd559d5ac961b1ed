"""Data shapes shared by the HTTP and AMQP edges.

faster-whisper objects are converted into these once, in ``transcriber``; nothing past the core
sees a faster-whisper type.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    computed_field,
    model_validator,
)

from serve_app.capacity.fair import Tenant

Task = Literal["transcribe", "translate"]
# Whisper keeps at most 224 tokens of a prompt (the last ones); a token is rarely under one
# character, so more text than this is never read.
MAX_PROMPT_CHARS = 2000
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
MAX_SPEAKERS = 20
# Keywords become faster-whisper's hotwords, a prompt the decoder reads before each window; it
# keeps at most 223 of their tokens, so more text than these bounds allow is never read.
MAX_KEYWORDS = 50
MAX_KEYWORD_CHARS = 64
MAX_LANGUAGES = 20
MAX_KNOWN_SPEAKERS = 4  # OpenAI's bound
MAX_SPEAKER_NAME_CHARS = 64


class TokenLogprob(BaseModel):
    """OpenAI's logprobs entry: a token as text, its log probability, its bytes."""

    token: str
    logprob: float
    bytes: list[int]


class Word(BaseModel):
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None  # with diarization
    # With include[]=logprobs: the word's tokens (serve_app.model.token_probs).
    logprobs: list[TokenLogprob] | None = None


class Segment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None = None
    speaker: str | None = None  # with diarization


class Transcript(BaseModel):
    """What the model produced for one piece of audio."""

    text: str
    language: str
    language_probability: float
    duration: float
    segments: list[Segment]
    model: str
    task: Task = "transcribe"
    # What the result could not honour of the request (speaker bounds); None when nothing.
    warnings: list[str] | None = None

    @property
    def words(self) -> list[Word]:
        return [word for segment in self.segments for word in segment.words or []]


class ServerVad(BaseModel):
    """``chunking_strategy``'s ``server_vad`` object: how the VAD that cuts a file into
    decoding windows finds speech. A field left out keeps the service's setting."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"] = "server_vad"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    # Audio kept before (and after) each stretch of speech.
    prefix_padding_ms: int | None = Field(None, ge=0, le=2000)
    # A pause at least this long ends a stretch of speech: where windows may be cut.
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000)


class KnownSpeaker(BaseModel):
    """known_speaker_names[] with known_speaker_references[]: a name, and the voice embedding
    of its reference clip (computed once, when the request comes in)."""

    name: str = Field(min_length=1, max_length=MAX_SPEAKER_NAME_CHARS)
    voice: list[float] = Field(max_length=1024)


class TranscribeOptions(BaseModel):
    """Decoding options a client may set; the rest come from settings."""

    model: str | None = None
    language: str | None = None
    task: Task = "transcribe"
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    word_timestamps: bool = False
    # Who spoke when (serve_app.transcription.speakers); the model replicas ignore these.
    diarize: bool = False
    min_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    max_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    known_speakers: list[KnownSpeaker] | None = Field(None, max_length=MAX_KNOWN_SPEAKERS)
    # Terms the decoder is biased toward (faster-whisper's hotwords).
    keywords: list[str] | None = Field(None, max_length=MAX_KEYWORDS)
    # With no language: detection chooses among these only.
    languages: list[str] | None = Field(None, max_length=MAX_LANGUAGES)
    vad: ServerVad | None = None  # chunking_strategy=server_vad; None: the service's
    # include[]=logprobs: words carry their tokens' log probabilities (Word.logprobs).
    logprobs: bool = False
    # Whose share of the model replicas the work counts against (serve_app.capacity.fair): set
    # by the service from the key or the job, never by a client, and never stored or shown.
    tenant: Tenant | None = Field(None, exclude=True)

    @property
    def hotwords(self) -> str | None:
        return ", ".join(self.keywords) if self.keywords else None

    @model_validator(mode="after")
    def _speakers_in_order(self) -> TranscribeOptions:
        low, high = self.min_speakers, self.max_speakers
        if low is not None and high is not None and low > high:
            raise ValueError("min_speakers is more than max_speakers")
        return self


class VerboseTranscription(BaseModel):
    """OpenAI's ``verbose_json`` response."""

    task: Task
    language: str
    duration: float
    text: str
    segments: list[Segment]
    words: list[Word] | None = None
    warnings: list[str] | None = None  # ours: what could not be honoured (speaker bounds)
    usage: dict[str, Any] | None = None  # {"type": "duration", "seconds": N}


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "whisper-serve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- AMQP messages (the Whisper-Local contract) ------------------------------------------------


class QueuedTranscriptionRequest(BaseModel):
    """A request on ``whisper_transcriptions``; unknown fields are kept for republishing."""

    model_config = ConfigDict(extra="allow")

    attachment_id: StrictInt
    audio_file_path: StrictStr
    language: StrictStr | None = None
    import_batch_id: StrictInt | None = None
    retry_count: StrictInt = Field(0, ge=0)
    # Ours, optional: terms the decoder is biased toward (the seeds' word boosting), and the
    # languages detection chooses among when "language" is empty.
    keywords: list[StrictStr] | None = None
    languages: list[StrictStr] | None = None


class ResultSegment(BaseModel):
    id: int
    start: float
    end: float
    text: str
    # Only when the request set "diarize": true (to_json leaves None out).
    speaker: str | None = None


class QueuedTranscriptionResult(BaseModel):
    """A result on ``whisper_results``: the seed's fields, plus language and segments."""

    attachment_id: int
    texto: str
    duration: float
    model: str
    success: bool
    import_batch_id: int | None
    error_message: str | None = None
    language: str | None = None
    segments: list[ResultSegment] | None = None
    attempts: int | None = None
    # Ours, with RESULTS_BUCKET: where the transcript and its JSON copy were written.
    result_objects: dict[str, str] | None = None

    def to_json(self) -> bytes:
        # import_batch_id is always present (even null); the optional fields only when set.
        optional_fields = {"error_message", "language", "segments", "attempts", "result_objects"}
        body = self.model_dump(exclude=optional_fields)
        optional = self.model_dump(include=optional_fields, exclude_none=True)
        return json.dumps({**body, **optional}, ensure_ascii=False).encode()


# --- Async jobs (HTTP and AMQP) --------------------------------------------------------------

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
JobSource = Literal["http", "amqp"]
JobEventType = Literal[
    "queued", "running", "progress", "segment", "completed", "failed", "cancelled"
]
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class JobSubmission(BaseModel):
    """POST /v1/jobs as JSON: audio already on a path the service can read, or an s3:// object."""

    model_config = ConfigDict(extra="forbid")

    audio_file_path: str = Field(min_length=1)
    # The format of the transcript written to RESULTS_BUCKET (GET .../result takes any).
    response_format: ResponseFormat | None = None
    model: str | None = None
    language: str | None = None
    task: Task = "transcribe"
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    word_timestamps: bool = False
    diarize: bool = False
    min_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    max_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    # OpenAI's parameters, checked as the sync route checks them (serve_app.api.params).
    keywords: list[str] | None = None
    languages: list[str] | None = None
    chunking_strategy: str | dict[str, Any] | None = None
    include: list[str] | None = None
    known_speaker_names: list[str] | None = None
    known_speaker_references: list[str] | None = None  # data URLs; multipart jobs for big ones
    callback_url: str | None = Field(None, max_length=2048)
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)


class WebhookAttempt(BaseModel):
    at: datetime
    status_code: int | None = None
    error: str | None = None


class WebhookState(BaseModel):
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttempt] = Field(default_factory=list)


class Job(BaseModel):
    id: str
    object: Literal["transcription.job"] = "transcription.job"
    source: JobSource
    # The AMQP request's attachment_id, for jobs from the Whisper-Local queue.
    external_id: str | None = None
    status: JobStatus
    model: str
    language: str | None = None
    options: TranscribeOptions
    filename: str | None = None
    # Where the service reads the audio (spool paths are internal): never in responses.
    audio_path: str = Field("", exclude=True)
    spooled: bool = Field(False, exclude=True)  # audio_path is the service's own copy
    attempts: int = 0
    # 0..1 by audio seconds done; exact once the duration is known.
    progress: float = 0.0
    duration: float | None = None
    processed_seconds: float = 0.0
    queue_position: int | None = None
    # From the work ahead and the pools' measured speed, fresh on every read; null once the
    # job is finished or while no speed is known. A running job's start is started_at.
    estimated_start: datetime | None = None
    estimated_completion: datetime | None = None
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    webhook: WebhookState | None = None
    result: Transcript | None = None
    # With RESULTS_BUCKET: the format of the transcript written back (null: text), and once
    # completed, where it and a JSON copy of the result are ({"transcript", "json"}).
    response_format: ResponseFormat | None = None
    result_objects: dict[str, str] | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def links(self) -> dict[str, str]:
        base = f"/v1/jobs/{self.id}"
        return {"self": base, "events": f"{base}/events", "result": f"{base}/result"}


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    next_cursor: str | None = None


class JobEvent(BaseModel):
    id: int
    type: JobEventType
    data: dict[str, Any]
