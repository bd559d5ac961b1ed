"""Property-based fuzzing of what outsiders hand the service: AMQP request and job messages,
audio paths, HTTP job and transcription intake (the real FastAPI app in-process, over a real
SQLite store), and FFmpeg decoding of mutated real recordings.

Each property says what must hold for every input: the parsers answer or refuse with their own
exceptions, paths resolve inside the root or are refused, HTTP answers only expected statuses in
the error shape with no internals, decoding returns sane samples or a domain error in bounded
time. Examples are derandomized and counted so CI runs the same inputs in well under a minute.

The bugs this file found (JSON past Python's limits and lone surrogates in AMQP bodies) are
fixed; the inputs that found them are kept at the end as plain tests.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from ingest import contract as c
from serve_app.errors import AudioError, AudioNotFoundError, PathNotAllowedError
from serve_app.media import audio
from serve_app.media.paths import resolve_audio_path
from tests.support import fuzz, speech
from tests.support.api_standin import StandIn, client

pytestmark = pytest.mark.timeout(180)  # a hang fails the test instead of stalling CI

FUZZ = settings(
    derandomize=True,  # the same examples on every run and every machine
    database=None,  # nothing written to .hypothesis/, nothing replayed from an earlier run
    deadline=None,  # wall time is bounded by max_examples and asserted where it matters
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- AMQP: the Whisper-Local request parser -------------------------------------------------------

VALID_REQUEST = {
    "attachment_id": 1,
    "audio_file_path": "/tmp/shared_audio/a.mp3",
    "language": "es",
    "import_batch_id": 7,
}
request_variants: dict[str, st.SearchStrategy[Any]] = {
    "attachment_id": st.sampled_from([0, -1, True, False, 1.0, "1", None, 2**63, 10**200])
    | fuzz.huge_ints,
    "audio_file_path": st.sampled_from(["", "\0", "/a\0b.mp3", "relative.mp3", "file:///x"])
    | fuzz.texts,
    "language": st.sampled_from(["", "EN", "zz", None, 1]) | fuzz.texts,
    "import_batch_id": st.sampled_from([None, True, -5, "7", 7.5, 10**200]),
    "retry_count": st.sampled_from([0, 1, 2, 3, -1, True, "1", 1.5, 10**200, None]),
}
request_bodies = (
    st.binary(max_size=300)
    | fuzz.json_bytes(fuzz.json_values)
    | fuzz.json_bytes(fuzz.mutated(VALID_REQUEST, request_variants))
    | fuzz.raw_json_objects(VALID_REQUEST)
    | st.sampled_from([b"", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"{" * 50, b"null"])
)


@settings(FUZZ, max_examples=600)
@given(raw=request_bodies)
@example(raw=json.dumps(VALID_REQUEST).encode())
@example(raw=json.dumps({**VALID_REQUEST, "attachment_id": True}).encode())
@example(raw=json.dumps({**VALID_REQUEST, "audio_file_path": 5}).encode())
def test_request_parser_answers_or_parks_every_body(raw: bytes) -> None:
    try:
        parsed = c.parse_request(raw)
    except c.MalformedRequest as exc:
        event("malformed")
        assert type(exc.attachment_id) is int
        assert exc.import_batch_id is None or type(exc.import_batch_id) is int
        # What the consumer does next: an error result for the producer.
        result = c.error_result(exc.attachment_id, exc.import_batch_id, "m", exc.message)
        assert json.loads(result.to_json())["attachment_id"] == exc.attachment_id
        return
    except c.UnanswerableMessage:
        event("unanswerable")
        return
    event("parsed")
    request = parsed.request
    assert type(request.attachment_id) is int
    assert request.attachment_id == parsed.body["attachment_id"]
    assert isinstance(request.audio_file_path, str)
    assert c.retry_count(request, {}) >= 0
    assert len(c.job_key(request)) == 64
    # Whatever parses can be retried: the retry body parses back to the same job.
    again = c.parse_request(c.retry_body(parsed.body, 1))
    assert c.job_key(again.request) == c.job_key(request)
    assert again.request.retry_count == 1


@settings(FUZZ, max_examples=300)
@given(
    raw=st.binary(max_size=100)
    | fuzz.json_bytes(fuzz.json_values)
    | fuzz.json_bytes(
        fuzz.mutated(
            {"job_id": "abc", "retry_count": 1},
            {"retry_count": st.sampled_from([-1, True, 1.5, "2", 10**200])},
        )
    )
    | fuzz.raw_json_objects({"job_id": "abc", "retry_count": 1})
)
@example(raw=c.job_message("abc", 2))
def test_job_message_parser_answers_or_parks_every_body(raw: bytes) -> None:
    try:
        job_id, count = c.parse_job_message(raw)
    except c.UnanswerableMessage:
        return
    assert isinstance(job_id, str) and job_id
    # Note: a JSON `true` passes as retry_count 1 (bool is an int); only the service itself
    # writes these messages, so that is tolerated here.
    assert isinstance(count, int) and count >= 0


# --- audio paths from outside ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def path_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/ with one real file, a symlink to a file outside, a symlinked directory outside, a
    dangling link and a subdirectory; the outside holds a 'secret'."""
    base = tmp_path_factory.mktemp("fuzz_paths")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.mp3").write_bytes(b"ID3")
    (base / "outside.mp3").write_bytes(b"secret")
    (root / "escape.mp3").symlink_to(base / "outside.mp3")
    (root / "dirlink").symlink_to(base)
    (root / "dangling.mp3").symlink_to(root / "missing.mp3")
    return root


path_parts = st.sampled_from(
    [
        *["a.mp3", "escape.mp3", "dirlink", "dangling.mp3", "sub", "root", "outside.mp3"],
        *["..", ".", "", "x" * 300, "\0", "a.mp3\0.wav", "%2e%2e", "...."],
    ]
) | st.text(max_size=12)
path_prefixes = st.sampled_from(["", "/", "//", "@ROOT@", "@ROOT@/", "@BASE@/", "file://", "~/"])
# Lone surrogates (the JSON escape "\ud800" in an AMQP body) are in the alphabet on purpose.
raw_paths = (
    st.text(max_size=80)
    | st.text(st.characters(categories=["Cs", "L", "P"]), max_size=20).map(lambda t: "@ROOT@/" + t)
    | st.tuples(path_prefixes, st.lists(path_parts, max_size=6)).map(
        lambda t: t[0] + "/".join(t[1])
    )
    | st.sampled_from([255, 256, 1024, 4096, 5000]).map(lambda n: "@ROOT@/" + "a" * n)
)


@settings(FUZZ, max_examples=400)
@given(raw=raw_paths)
@example(raw="@ROOT@/a.mp3")
@example(raw="@ROOT@/escape.mp3")
@example(raw="@ROOT@/dirlink/outside.mp3")
@example(raw="@ROOT@/sub/../a.mp3")
def test_paths_resolve_inside_the_root_or_are_refused(path_root: Path, raw: str) -> None:
    raw = raw.replace("@ROOT@", str(path_root)).replace("@BASE@", str(path_root.parent))
    real_root = Path(os.path.realpath(path_root))
    # The oracle: absolute, no NUL, valid Unicode, resolving inside the root to a regular file.
    usable = raw.startswith("/") and "\0" not in raw and _encodable(raw)
    real = Path(os.path.realpath(raw)) if usable else None
    expected = real is not None and real.is_relative_to(real_root) and os.path.isfile(real)
    try:
        resolved = resolve_audio_path(raw, [path_root])
    except AudioError as exc:
        assert type(exc) in (PathNotAllowedError, AudioNotFoundError), exc
        assert not expected, (raw, exc)
        return
    assert expected, raw
    assert resolved.is_relative_to(real_root) and resolved.is_file()
    assert resolved.read_bytes() == b"ID3"


# --- HTTP intake: the real app in-process --------------------------------------------------


def _getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """DNS stand-in for callback URLs: deterministic and offline."""
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name.endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    address = {"localhost": "127.0.0.1", "internal.example": "10.0.0.5"}.get(name, "93.184.216.34")
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]


@pytest.fixture
def api(backend: StandIn, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    """The stand-in backend with room for many jobs, a webhook secret (so callback URLs are
    resolved and judged), a model that answers at once, and odd files under the root."""
    backend.settings = backend.settings.model_copy(
        update={
            "max_queued_jobs_per_key": 1_000_000,
            "max_spooled_mb_per_key": 1_000_000.0,
            "webhook_secret": SecretStr("fuzz-secret"),
        }
    )
    backend.release.set()
    monkeypatch.setattr(socket, "getaddrinfo", _getaddrinfo)
    root = backend.settings.allowed_audio_roots[0]
    outside = root.parent / "outside.mp3"
    outside.write_bytes((root / "a.mp3").read_bytes())
    (root / "escape.mp3").symlink_to(outside)
    (root / "empty.mp3").write_bytes(b"")
    (root / "notes.txt").write_text("not audio")
    (root / "sub.mp3").mkdir()
    return backend


def _post(backend: StandIn, route: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        async with client(backend) as http:
            response = await http.post(route, content=body, headers={"content-type": content_type})
        return response.status_code, response.content

    status, answer = asyncio.run(go())
    event(f"status {status}")
    return status, answer


_fresh_keys = itertools.count()


def _fill(backend: StandIn, data: bytes) -> bytes:
    """@ROOT@ becomes the allowed root; @KEY@ a fresh idempotency key, so that a body close to
    valid is not answered from an earlier job before the checks it should reach."""
    root = str(backend.settings.allowed_audio_roots[0])
    data = data.replace(b"@ROOT@", json.dumps(root)[1:-1].encode())
    while b"@KEY@" in data:
        data = data.replace(b"@KEY@", f"key-{next(_fresh_keys)}".encode(), 1)
    return data


VALID_JOB = {
    "audio_file_path": "@ROOT@/a.mp3",
    "model": "base",
    "language": "en",
    "task": "transcribe",
    "prompt": "hello",
    "word_timestamps": False,
    "callback_url": "https://example.com/hook",
    "idempotency_key": "@KEY@",
}
models = st.sampled_from(["base", "whisper-1", "tiny.en", "", "BASE", "../base"])
languages = st.sampled_from(["en", "EN-us", "es_ES", "", "  ", "zz", "auto", "en-", "-"])
callback_urls = st.sampled_from(
    [
        "https://example.com/hook",
        "http://localhost/h",
        "http://127.0.0.1:8000/",
        "http://[::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[64:ff9b::a00:1]/",
        "http://169.254.169.254/latest/meta-data",
        "http://internal.example/",
        "http://nx.invalid/",
        "http://user:pw@example.com/",
        "http://example.com@10.0.0.1/",
        "http://example.com\\@10.0.0.1/",
        "ftp://example.com/",
        "javascript:alert(1)",
        "http://",
        "http:///x",
        "https://xn--/",
        "http://é.com/",
        "http://[::1%25eth0]/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://a..b/",
        "http://example.com:99999/",
        "https://example.com/" + "a" * 3000,
    ]
)
job_variants: dict[str, st.SearchStrategy[Any]] = {
    "audio_file_path": st.sampled_from(
        [
            "@ROOT@/escape.mp3",
            "@ROOT@/empty.mp3",
            "@ROOT@/notes.txt",
            "@ROOT@/sub.mp3",
            "@ROOT@/missing.mp3",
            "@ROOT@/../a.mp3",
            "@ROOT@",
            "@ROOT@/a.MP3",
            "@ROOT@/a.mp3\0.txt",
            "@ROOT@/" + "a" * 300 + ".mp3",
            "a.mp3",
            "/etc/passwd",
            "file:///etc/passwd",
            "http://127.0.0.1/a.mp3",
            "",
        ]
    ),
    "model": models,
    "language": languages,
    "task": st.sampled_from(["translate", "TRANSCRIBE", ""]),
    "prompt": st.sampled_from(["", "x" * 2000, "x" * 2001, "\0"]),
    "word_timestamps": st.sampled_from([True, "true", "yes", 1, 0, None, "1", 2]),
    "callback_url": callback_urls,
    "idempotency_key": st.sampled_from(["k", "", "x" * 255, "x" * 256, "\0", "amqp:" + "0" * 64]),
}
# A valid job but for one field, set to one of its hostile values (or any text): the bodies
# that reach the path, model, language and callback URL checks past the schema.
one_hostile_field = st.sampled_from(sorted(job_variants)).flatmap(
    lambda key: (job_variants[key] | fuzz.texts).map(lambda value: {**VALID_JOB, key: value})
)
json_content_types = st.sampled_from(["application/json"] * 4 + ["application/json; charset=x"])
odd_content_types = st.sampled_from(
    ["text/plain", "", "application/jsonx", "multipart/form-data", "multipart/form-data; boundary="]
)


@settings(FUZZ, max_examples=150)
@given(
    body=fuzz.json_bytes(fuzz.mutated(VALID_JOB, job_variants))
    | fuzz.json_bytes(one_hostile_field)
    | fuzz.json_bytes(fuzz.json_values)
    | fuzz.raw_json_objects(VALID_JOB)
    | st.binary(max_size=300),
    content_type=json_content_types,
)
@example(body=json.dumps(VALID_JOB).encode(), content_type="application/json")
def test_json_job_intake_never_fails_unexpectedly(
    api: StandIn, body: bytes, content_type: str
) -> None:
    status, answer = _post(api, "/v1/jobs", _fill(api, body), content_type)
    fuzz.check_answer(status, answer)
    if status in (200, 202):
        job = json.loads(answer)
        assert job["status"] == "queued" and "audio_path" not in job


@settings(FUZZ, max_examples=30)
@given(body=st.binary(max_size=200), content_type=odd_content_types)
def test_other_content_types_are_refused_cleanly(
    api: StandIn, body: bytes, content_type: str
) -> None:
    status, answer = _post(api, "/v1/jobs", body, content_type)
    fuzz.check_answer(status, answer)


@st.composite
def multipart_parts(
    draw: st.DrawFn, field_values: dict[str, st.SearchStrategy[bytes]]
) -> list[fuzz.Part]:
    """An optional file part (any name, any bytes, or a real clip as @CLIP@) among form fields,
    in any order. Known field names and usable values come up often, so that many bodies get
    past the first check; unknown names, any text and non-UTF-8 bytes come up too."""
    known = st.sampled_from(sorted(field_values))
    parts: list[fuzz.Part] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.sampled_from([True, True, True, False])):  # mostly a known field
            name = draw(known)
            parts.append((name.encode(), None, None, draw(field_values[name] | weird_values)))
        else:
            parts.append((draw(weird_names), None, None, draw(weird_values)))
    if draw(st.sampled_from([True] * 9 + [False])):  # nine in ten carry a file
        filename = draw(
            st.sampled_from([b"a.mp3", b"b.WAV", b"c.d.ogg"])
            | st.none()
            | fuzz.file_names.map(lambda s: s.encode())
            | st.binary(max_size=20)
        )
        content_type = draw(
            st.sampled_from([None, b"audio/mpeg", b"application/octet-stream", b"text/x"])
        )
        data = draw(st.sampled_from([b"@CLIP@", b"@CLIP@", b""]) | st.binary(max_size=300))
        parts.insert(draw(st.integers(0, len(parts))), (b"file", filename, content_type, data))
    return parts


weird_names = st.sampled_from([b"file", b"", b"FILE", b"file[]"]) | fuzz.encoded(fuzz.texts)
weird_values = fuzz.encoded(fuzz.texts)


def _bytes(*values: str) -> st.SearchStrategy[bytes]:
    return st.sampled_from([v.encode() for v in values])


job_fields = {
    "model": _bytes("base", "whisper-1", "tiny.en", ""),
    "language": _bytes("en", "EN-us", "zz", ""),
    "task": _bytes("transcribe", "translate", "x"),
    "prompt": _bytes("hi", "x" * 2001),
    "word_timestamps": _bytes("true", "false", "1", "maybe"),
    "callback_url": _bytes("https://example.com/h", "http://127.0.0.1/", "nope"),
    "idempotency_key": _bytes("@KEY@", "k", "x" * 256),
    "audio_file_path": _bytes("/etc/passwd", "@ROOT@/a.mp3"),
}
transcription_fields = {
    "model": _bytes("base", "whisper-1", "tiny.en", ""),
    "language": _bytes("en", "EN-us", "zz", ""),
    "prompt": _bytes("hi", "x" * 2001),
    "response_format": _bytes("json", "text", "srt", "vtt", "verbose_json", "xml", ""),
    "temperature": _bytes("0", "0.5", "1", "1.0001", "-0", "nan", "inf", "1e999", "x", ""),
    "stream": _bytes("true", "false", "1", "0", "yes", "on", "maybe", ""),
    "timestamp_granularities[]": _bytes("word", "segment", "char", ""),
}


@pytest.fixture
def clip_bytes(clip) -> bytes:  # type: ignore[no-untyped-def]
    return clip("en_office", ".mp3").read_bytes()  # type: ignore[no-any-return]


def _multipart(backend: StandIn, parts: list[fuzz.Part], clip: bytes) -> tuple[bytes, str]:
    filled = [
        (name, filename, ctype, clip if data == b"@CLIP@" else _fill(backend, data))
        for name, filename, ctype, data in parts
    ]
    return fuzz.multipart_body(filled)


@settings(FUZZ, max_examples=80)
@given(parts=multipart_parts(job_fields))
@example(parts=[(b"file", b"a.mp3", b"audio/mpeg", b"@CLIP@")])
def test_multipart_job_intake_never_fails_unexpectedly(
    api: StandIn, clip_bytes: bytes, parts: list[fuzz.Part]
) -> None:
    body, content_type = _multipart(api, parts, clip_bytes)
    status, answer = _post(api, "/v1/jobs", body, content_type)
    fuzz.check_answer(status, answer)


@settings(FUZZ, max_examples=80)
@given(parts=multipart_parts(transcription_fields))
@example(parts=[(b"file", b"a.mp3", None, b"@CLIP@"), (b"response_format", None, None, b"srt")])
@example(parts=[(b"file", b"a.mp3", None, b"@CLIP@"), (b"stream", None, None, b"true")])
def test_multipart_transcription_never_fails_unexpectedly(
    api: StandIn, clip_bytes: bytes, parts: list[fuzz.Part]
) -> None:
    body, content_type = _multipart(api, parts, clip_bytes)
    status, answer = _post(api, "/v1/audio/transcriptions", body, content_type)
    fuzz.check_answer(status, answer)  # a 200 is a transcript (or an event stream) of the clip
    assert api.admission.held_bytes == 0  # every decoded sample released, whatever happened


async def test_the_fuzzed_routes_are_reachable(api: StandIn, clip_bytes: bytes) -> None:
    """The harness reaches the routes (no blanket 401/415 that would make the fuzz vacuous)."""
    job = json.loads(_fill(api, json.dumps({**VALID_JOB, "callback_url": None}).encode()))
    upload = [(b"file", b"a.mp3", b"audio/mpeg", clip_bytes)]
    async with client(api) as http:
        by_path = await http.post("/v1/jobs", json=job)
        body, content_type = fuzz.multipart_body(upload)
        headers = {"content-type": content_type}
        by_upload = await http.post("/v1/jobs", content=body, headers=headers)
        sync = await http.post("/v1/audio/transcriptions", content=body, headers=headers)
    assert (by_path.status_code, by_upload.status_code, sync.status_code) == (202, 202, 200)


# --- decoding mutated real recordings ----------------------------------------------------------

LIMITS = audio.AudioLimits(max_bytes=10 * 1024 * 1024, max_duration_s=60)
CONTAINERS = sorted(speech.ENCODINGS)
DECODE_BUDGET_S = 10.0


@pytest.fixture(scope="module")
def recordings(clip) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {suffix: clip("en_office", suffix).read_bytes() for suffix in CONTAINERS}


@pytest.mark.parametrize("suffix", CONTAINERS)
@settings(FUZZ, max_examples=7)
@given(steps=fuzz.mutation_steps(), other=st.sampled_from(CONTAINERS))
def test_mutated_recordings_decode_or_fail_cleanly(
    recordings: dict[str, bytes], suffix: str, steps: list[fuzz.Step], other: str
) -> None:
    data = fuzz.apply_steps(recordings[suffix], steps, recordings[other])
    started = time.monotonic()
    try:
        decoded = audio.decode(io.BytesIO(data), LIMITS)
    except AudioError as exc:
        event(type(exc).__name__)
    else:
        event("decoded")
        samples = decoded.samples
        assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) > 0
        assert decoded.sample_rate == audio.SAMPLE_RATE
        assert decoded.duration <= LIMITS.max_duration_s + 1
        peak = float(np.abs(samples).max())
        assert math.isfinite(peak) and peak <= 1.0
    elapsed = time.monotonic() - started
    assert elapsed < DECODE_BUDGET_S, f"decode took {elapsed:.1f} s"


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# --- bugs fuzzing found, fixed: the inputs that found them -------------------------------------

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
LONG_INT = b"9" * 5000


@pytest.mark.parametrize(
    "raw",
    [
        DEEP_ARRAY,
        b'{"attachment_id": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"attachment_id": ' + LONG_INT + b"}",
        b'{"attachment_id": 1, "audio_file_path": "/a.mp3", "extra": ' + LONG_INT + b"}",
    ],
    ids=["deep-array", "deep-field", "long-attachment-id", "long-extra-field"],
)
def test_json_past_pythons_limits_is_parked(raw: bytes) -> None:
    # json.loads raised RecursionError or ValueError through the parser: the consumer requeued
    # such a body every second, forever, instead of parking it.
    with pytest.raises(c.UnanswerableMessage, match="past what the service reads"):
        c.parse_request(raw)


@pytest.mark.parametrize(
    "raw", [DEEP_ARRAY, b'{"job_id": "a", "retry_count": ' + LONG_INT + b"}"], ids=["deep", "long"]
)
def test_job_messages_past_pythons_limits_are_parked(raw: bytes) -> None:
    with pytest.raises(c.UnanswerableMessage):
        c.parse_job_message(raw)


@pytest.mark.parametrize("tail", ["\ud800", "\ud800.mp3", "sub/\udbff\udbff.mp3"])
def test_surrogate_paths_are_refused(path_root: Path, tail: str) -> None:
    # realpath raised UnicodeEncodeError, which no edge translates.
    with pytest.raises(AudioError, match="not valid Unicode"):
        resolve_audio_path(f"{path_root}/{tail}", [path_root])


def test_a_request_with_a_lone_surrogate_is_answered_with_an_error() -> None:
    # It parsed, then neither its retry body nor its result could be encoded: requeued forever.
    raw = b'{"attachment_id": 1, "audio_file_path": "/tmp/\\ud800.mp3", "import_batch_id": 3}'
    with pytest.raises(c.MalformedRequest, match="lone surrogate") as caught:
        c.parse_request(raw)
    result = c.error_result(caught.value.attachment_id, 3, "m", caught.value.message)
    assert json.loads(result.to_json())["attachment_id"] == 1
