"""Hypothesis strategies and checks for the fuzz tests (tests/unit/test_fuzz.py): hostile JSON
values, mutations of a valid object, raw JSON literals ``json.dumps`` cannot write, hand-built
multipart bodies, byte-level mutations of real recordings, and the error-body check."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

# Past Python's own limits (4300-digit integers, the recursion limit): the parsers must park
# such bodies, not raise (tests/unit/test_fuzz.py, the fixed bugs at its end).
MAX_INT_DIGITS = 10_000
MAX_NESTING = 10_000

# --- JSON values ---------------------------------------------------------------------------------

# Text as outsiders send it: any code point but lone surrogates (NUL, controls, RTL marks, emoji).
texts = st.text(max_size=40) | st.sampled_from(
    ["", " ", "\0", "a\0b", "\u202e", "ñandú", "😀" * 3, "\r\n", "null", "1", "true"]
)
huge_ints = st.integers(min_value=-(10**300), max_value=10**300) | st.sampled_from(
    [2**31, 2**63, 2**64, -(2**63) - 1, 10**100]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(
    draw: st.DrawFn,
    base: dict[str, Any],
    variants: dict[str, st.SearchStrategy[Any]] | None = None,
) -> dict[str, Any]:
    """``base`` after zero to three edits: a field dropped, a field replaced (by one of its
    variants or any JSON value), or an extra field added. Few edits, so most bodies stay close
    enough to valid to reach the checks past the schema."""
    variants = variants or {}
    body = dict(base)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["drop", "replace", "replace", "add"]))
        if kind == "add":
            body[draw(texts)] = draw(json_values)
            continue
        key = draw(st.sampled_from(sorted(base)))
        if kind == "drop":
            body.pop(key, None)
        else:
            body[key] = draw(variants.get(key, st.nothing()) | json_values)
    return body


# Literals json.dumps never writes; each replaces a string placeholder in a serialized object.
raw_literals = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-0",
        "1.0",
        "1e2",
        "0x10",
        "01",
        '"\\ud800"',  # a lone surrogate, escaped
        '"\\udcff"',
        '"\\u0000"',
        '"a\\u0000b"',
        "true",
        "[]",
        "{}",
    ]
) | st.integers(1, MAX_INT_DIGITS).map(lambda n: "9" * n)


def _nested(depth: int, kind: str) -> str:
    if kind == "[]":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


nested_literals = st.builds(_nested, st.integers(1, MAX_NESTING), st.sampled_from(["[]", "{}"]))
_PLACEHOLDER = "\ue000placeholder\ue000"


@st.composite
def raw_json_objects(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """``base`` serialized, with one field's value replaced by a raw literal."""
    body = dict(base)
    key = draw(st.sampled_from([*base, "extra"]))
    body[key] = _PLACEHOLDER
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    literal = draw(raw_literals | nested_literals)
    return (
        text.replace(json.dumps(_PLACEHOLDER, ensure_ascii=False), literal)
        .replace(json.dumps(_PLACEHOLDER), literal)
        .encode()
    )


def json_bytes(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Serialized compactly or not, ASCII-escaped or not."""
    return st.tuples(values, st.booleans(), st.booleans()).map(
        lambda t: json.dumps(t[0], ensure_ascii=t[1], indent=2 if t[2] else None).encode()
    )


# --- multipart bodies ----------------------------------------------------------------------------

BOUNDARY = "fuzzBoundary7MA4YWxkTrZu0gW"
# (field name, file name or None, content type or None, data), all raw bytes.
Part = tuple[bytes, bytes | None, bytes | None, bytes]

file_names = (
    st.text(max_size=40)  # control characters included: httpx would escape them, we do not
    | st.text(min_size=250, max_size=400)
    | st.sampled_from(
        [
            "a.mp3",
            "A.WAV",
            ".mp3",
            "a.mp3.exe",
            "../../etc/passwd.mp3",
            "a\0.mp3",
            "a\r\nX-Injected: 1.mp3",
            'a".mp3',
            "a;.mp3",
            "\u202ecod.mp3",
            "x" * 300 + ".mp3",
            "é" * 128 + ".ogg",
        ]
    )
)


def multipart_body(parts: Sequence[Part]) -> tuple[bytes, str]:
    """Parts of (name, filename or None, content type or None, data), written as they are:
    no escaping, so names may carry quotes, CR/LF and NULs. Returns (body, content type)."""
    out = bytearray()
    for name, filename, content_type, data in parts:
        out += b"--" + BOUNDARY.encode() + b"\r\n"
        out += b'Content-Disposition: form-data; name="' + name + b'"'
        if filename is not None:
            out += b'; filename="' + filename + b'"'
        out += b"\r\n"
        if content_type is not None:
            out += b"Content-Type: " + content_type + b"\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += b"--" + BOUNDARY.encode() + b"--\r\n"
    return bytes(out), f"multipart/form-data; boundary={BOUNDARY}"


def encoded(text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """UTF-8 mostly; sometimes raw bytes that are not UTF-8 at all."""
    return text.map(lambda s: s.encode()) | st.binary(max_size=40)


# --- HTTP answers --------------------------------------------------------------------------------

EXPECTED_STATUSES = frozenset({200, 202, 400, 401, 404, 413, 415, 422, 429, 503})
LEAKS = ("Traceback", "object at 0x", 'File "/')


def check_answer(status: int, body: bytes) -> None:
    """No unexpected status, no leaked internals, and errors in the service's error shape."""
    assert status in EXPECTED_STATUSES, (status, body[:500])
    text = body.decode(errors="replace")
    for leak in LEAKS:
        assert leak not in text, (status, text[:500])
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["message"], body[:500]


# --- byte mutations of real files ---------------------------------------------------------------

HEADERS = [
    b"ffconcat version 1.0\nfile /etc/passwd\n",
    b"ffconcat version 1.0\n",
    b"#EXTM3U\n#EXT-X-TARGETDURATION:1\nhttp://127.0.0.1:9/a.ts\n",
    b"#EXTM3U\n",
    b"v=0\no=- 0 0 IN IP4 127.0.0.1\nm=audio 9 RTP/AVP 0\n",
    b"<?xml version='1.0'?><smil>",
    b"ID3\x04\x00\x00\x00\x00\x00\x00",
    b"RIFF\xff\xff\xff\xffWAVE",
    b"OggS\x00",
    b"fLaC",
    b"\x1aE\xdf\xa3",
]

Step = tuple[str, int, int, bytes]


@st.composite
def mutation_steps(draw: st.DrawFn) -> list[Step]:
    """One to four edits; offsets favour the header, where containers keep sizes and rates."""
    offset = st.integers(0, 96) | st.integers(0, 1 << 20)
    chunk = (
        st.binary(min_size=1, max_size=64)
        | st.sampled_from([b"\x00" * 4, b"\xff" * 4, b"\x01\x00\x00\x00", b"\x7f\xff\xff\xff"])
        | st.sampled_from(HEADERS)
    )
    step = st.tuples(
        st.sampled_from(["flip", "overwrite", "truncate", "duplicate", "splice", "prefix"]),
        offset,
        st.integers(1, 1 << 16),
        chunk,
    )
    return draw(st.lists(step, min_size=1, max_size=4))


def apply_steps(data: bytes, steps: list[Step], other: bytes) -> bytes:
    out = bytearray(data)
    for kind, at, length, chunk in steps:
        at %= max(len(out), 1)
        if kind == "flip":  # invert a range of bits
            end = min(len(out), at + min(length, 512))
            out[at:end] = bytes(b ^ 0xFF for b in out[at:end])
        elif kind == "overwrite":
            out[at : at + len(chunk)] = chunk
        elif kind == "truncate":
            del out[at:]
        elif kind == "duplicate":  # the chunk, repeated a few times in place
            piece = bytes(out[at : at + length])
            out[at:at] = piece * (1 + len(chunk) % 4)
        elif kind == "splice":  # this file's head, the other container's tail
            out[at:] = other[at % max(len(other), 1) :]
        else:
            out[:0] = chunk
    return bytes(out)
