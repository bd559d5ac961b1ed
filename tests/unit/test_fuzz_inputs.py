"""Property-based fuzzing (hypothesis) of what outsiders hand the service: AMQP request bodies,
paths, HTTP job intake, and audio files mutated from real recordings. Bounded and derandomized,
so CI runs the same examples in a few tens of seconds: no crash, no hang, no unexpected status."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import contract as c
from serve_app import audio
from serve_app.errors import AudioError
from serve_app.paths import resolve_audio_path
from tests.support import speech
from tests.support.api_standin import StandIn, client

BOUNDED = settings(
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
VALID_REQUEST = {
    "attachment_id": 1,
    "audio_file_path": "/tmp/shared_audio/a.mp3",
    "language": "es",
    "import_batch_id": 7,
}
EXPECTED_STATUSES = {200, 202, 400, 401, 404, 413, 415, 422, 429, 503}


def _mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={key: st.just(value) | json_values for key, value in base.items()}
        | {"extra": json_values, "retry_count": json_values},
    )


# --- AMQP messages ------------------------------------------------------------------------------


@settings(BOUNDED, max_examples=400)
@given(st.binary(max_size=300) | _mutated(VALID_REQUEST).map(lambda d: json.dumps(d).encode()))
def test_request_parser_answers_or_parks_every_body(raw: bytes) -> None:
    try:
        parsed = c.parse_request(raw)
    except c.MalformedRequest as exc:
        assert isinstance(exc.attachment_id, int)
    except c.UnanswerableMessage:
        pass
    else:
        assert isinstance(parsed.request.attachment_id, int)
        assert c.job_key(parsed.request)


@settings(BOUNDED, max_examples=200)
@given(st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
def test_job_message_parser_answers_or_parks_every_body(raw: bytes) -> None:
    try:
        job_id, count = c.parse_job_message(raw)
    except c.UnanswerableMessage:
        return
    assert isinstance(job_id, str) and job_id and count >= 0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("paths")
    allowed = base / "root"
    allowed.mkdir()
    (allowed / "a.mp3").write_bytes(b"ID3")
    (base / "secret.mp3").write_bytes(b"ID3")
    (allowed / "escape.mp3").symlink_to(base / "secret.mp3")
    return allowed


@settings(BOUNDED, max_examples=300)
@given(
    st.text(max_size=60)
    | st.sampled_from(["/", "..", "/../", "escape.mp3", "a.mp3", "\0"])
    .flatmap(
        lambda part: st.lists(st.sampled_from([part, "a.mp3", "..", "escape.mp3"]), max_size=5)
    )
    .map("/".join)
)
def test_paths_resolve_inside_the_root_or_are_refused(root: Path, raw: str) -> None:
    for candidate in (raw, f"{root}/{raw}"):
        try:
            resolved = resolve_audio_path(candidate, [root])
        except AudioError:
            continue
        assert resolved.is_relative_to(root.resolve()) and resolved.is_file()


# --- HTTP job intake ----------------------------------------------------------------------------


def _check(status: int, body: bytes) -> None:
    assert status in EXPECTED_STATUSES, (status, body[:300])
    text = body.decode(errors="replace")
    assert "Traceback" not in text and "object at 0x" not in text
    if status >= 400:
        assert isinstance(json.loads(body)["error"]["message"], str)


async def _post(backend: StandIn, **kwargs: Any) -> tuple[int, bytes]:
    async with client(backend) as http:
        response = await http.post(**kwargs)
    return response.status_code, response.content


JOB_FIELDS = {
    "audio_file_path": "/nowhere/a.mp3",
    "model": "tiny.en",
    "language": "en",
    "task": "transcribe",
    "prompt": "hello",
    "word_timestamps": False,
    "callback_url": "https://example.com/hook",
    "idempotency_key": "k",
}


@settings(BOUNDED, max_examples=150)
@given(
    body=_mutated(JOB_FIELDS).map(lambda d: json.dumps(d).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
)
def test_json_job_intake_never_fails_unexpectedly(backend: StandIn, body: bytes) -> None:
    status, answer = asyncio.run(
        _post(
            backend,
            url="/v1/jobs",
            content=body,
            headers={"content-type": "application/json"},
        )
    )
    _check(status, answer)


form_text = st.text(max_size=40) | st.sampled_from(["", "json", "es", "word", "9" * 40, "1e999"])


@settings(BOUNDED, max_examples=60)
@given(
    name=st.text(max_size=300) | st.sampled_from(["a.mp3", "b.wav", "x", ".mp3"]),
    data=st.binary(max_size=400),
    fields=st.dictionaries(
        st.sampled_from(
            ["model", "language", "prompt", "response_format", "temperature", "stream", "task"]
        ),
        form_text,
        max_size=4,
    ),
    route=st.sampled_from(["/v1/jobs", "/v1/audio/transcriptions", "/v1/audio/translations"]),
)
def test_multipart_intake_never_fails_unexpectedly(
    backend: StandIn, name: str, data: bytes, fields: dict[str, str], route: str
) -> None:
    backend.release.set()  # the stand-in model answers at once
    status, answer = asyncio.run(
        _post(backend, url=route, files={"file": (name, data)}, data=fields)
    )
    if status == 200 and route != "/v1/jobs":
        return  # a transcript (text, srt, json...) of whatever decoded
    _check(status, answer)


# --- audio decoding of mutated real files ------------------------------------------------------

LIMITS = audio.AudioLimits(max_bytes=10 * 1024 * 1024, max_duration_s=60)


@pytest.fixture(scope="module")
def recordings(speech_dir: Path) -> list[bytes]:
    wav = speech.synthesize("en_office", speech_dir)
    return [
        (wav if suffix == ".wav" else speech.encode(wav, suffix, speech_dir)).read_bytes()
        for suffix in sorted(speech.ENCODINGS)
    ]


@st.composite
def mutations(draw: st.DrawFn, count: int) -> tuple[int, list[tuple[str, int, int, bytes]]]:
    index = draw(st.integers(0, count - 1))
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["overwrite", "truncate", "duplicate", "splice", "prefix"]),
                st.integers(0, 1 << 20),
                st.integers(1, 4096),
                st.binary(min_size=1, max_size=64)
                | st.sampled_from([b"ffconcat version 1.0\nfile a.wav\n", b"#EXTM3U\n", b"v=0\n"]),
            ),
            min_size=1,
            max_size=3,
        )
    )
    return index, steps


def _apply(data: bytes, steps: list[tuple[str, int, int, bytes]], other: bytes) -> bytes:
    out = bytearray(data)
    for kind, at, length, chunk in steps:
        at %= max(len(out), 1)
        if kind == "overwrite":
            out[at : at + len(chunk)] = chunk
        elif kind == "truncate":
            del out[at:]
        elif kind == "duplicate":
            out[at:at] = out[at : at + length]
        elif kind == "splice":
            out[at:] = other[at % max(len(other), 1) :]
        else:
            out[:0] = chunk
    return bytes(out)


@settings(BOUNDED, max_examples=70)
@given(mutation=mutations(10))
def test_mutated_recordings_decode_or_fail_cleanly(
    recordings: list[bytes], mutation: tuple[int, list[tuple[str, int, int, bytes]]]
) -> None:
    index, steps = mutation
    data = _apply(recordings[index], steps, recordings[(index + 1) % len(recordings)])
    started = time.monotonic()
    try:
        decoded = audio.decode(io.BytesIO(data), LIMITS)
    except AudioError:
        pass
    else:
        assert decoded.samples.dtype == np.float32
        assert decoded.duration <= LIMITS.max_duration_s + 1
        assert float(np.abs(decoded.samples).max(initial=0)) <= 1.0
    assert time.monotonic() - started < 10
