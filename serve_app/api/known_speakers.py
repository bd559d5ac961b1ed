"""known_speaker_names[] and known_speaker_references[]: names for a diarized file's speakers,
each with a short clip of its voice as a data URL. The clips are checked and decoded here, like
uploads (in the sandboxed decoder, within the replica's decode budget), and turned into voice
embeddings by the Diarizer; the request carries only the names and the embeddings on."""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Sequence
from dataclasses import replace

from serve_app.api.deps import Backend
from serve_app.capacity.fair import Tenant
from serve_app.errors import InvalidOptionError, ServiceError
from serve_app.media import audio
from serve_app.media.audio import AudioLimits
from serve_app.model_options import has_control_characters
from serve_app.schemas import MAX_KNOWN_SPEAKERS, MAX_SPEAKER_NAME_CHARS, KnownSpeaker

NAMES, REFERENCES = "known_speaker_names", "known_speaker_references"
# OpenAI's bounds on a reference clip; a data URL within the form parser's 1 MB per field.
MIN_REFERENCE_S, MAX_REFERENCE_S = 2.0, 10.0
MAX_REFERENCE_BYTES = 700 * 1024
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)", re.S)
# Names the service gives speakers without a reference.
_RESERVED = re.compile(r"[A-Z]|S\d+")


def wanted(names: Sequence[str] | None, references: Sequence[str] | None) -> bool:
    return bool(names or references)


def check_names(names: Sequence[str] | None, references: Sequence[str] | None) -> list[str]:
    """The names, checked against each other and against the references' count."""
    names, references = list(names or []), list(references or [])
    if len(names) != len(references):
        raise InvalidOptionError(
            f"{len(names)} known_speaker_names for {len(references)} known_speaker_references: "
            "give one name per reference clip",
            param=REFERENCES if names else NAMES,
        )
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise InvalidOptionError(f"At most {MAX_KNOWN_SPEAKERS} known speakers", param=NAMES)
    cleaned = [" ".join(name.split()) for name in names]
    for name in cleaned:
        if not name or len(name) > MAX_SPEAKER_NAME_CHARS:
            raise InvalidOptionError(
                f"A known speaker's name has 1 to {MAX_SPEAKER_NAME_CHARS} characters",
                param=NAMES,
            )
        if has_control_characters(name):
            raise InvalidOptionError(
                "A known speaker's name contains control characters", param=NAMES
            )
        if _RESERVED.fullmatch(name):
            raise InvalidOptionError(
                f"'{name}' is how speakers without a reference are named; choose another",
                param=NAMES,
            )
    if len(set(cleaned)) != len(cleaned):
        raise InvalidOptionError("known_speaker_names must differ", param=NAMES)
    return cleaned


def parse(
    names: Sequence[str] | None, references: Sequence[str] | None, diarize: bool
) -> list[tuple[str, bytes]]:
    """The cheap checks, before any audio is decoded: each name with its clip's bytes."""
    if not wanted(names, references):
        return []
    if not diarize:
        raise InvalidOptionError(
            "Known speakers name the speakers of a diarized transcript: "
            "set diarize=true or response_format=diarized_json",
            param=NAMES,
        )
    checked = check_names(names, references)
    clips = [_clip_bytes(url, i) for i, url in enumerate(references or [])]
    return list(zip(checked, clips, strict=True))


async def voices(
    parsed: list[tuple[str, bytes]], backend: Backend, limits: AudioLimits, tenant: Tenant
) -> list[KnownSpeaker] | None:
    """Each name with its clip's voice embedding (the Diarizer's work, in ``tenant``'s share);
    None when the request names nobody."""
    found = [
        KnownSpeaker(name=name, voice=await _voice(data, i, backend, limits, tenant))
        for i, (name, data) in enumerate(parsed)
    ]
    return found or None


def _clip_bytes(url: object, index: int) -> bytes:
    where = f"known_speaker_references[{index}]"
    if not isinstance(url, str):
        raise InvalidOptionError(f"{where} must be a data URL", param=REFERENCES)
    match = _DATA_URL.fullmatch(url.strip())
    if match is None:
        raise InvalidOptionError(
            f"{where} must be a base64 data URL (data:audio/wav;base64,...)", param=REFERENCES
        )
    mime = (match.group(1) or "").lower()
    if mime and not mime.startswith(("audio/", "video/", "application/octet-stream")):
        raise InvalidOptionError(f"{where} is {mime}, not audio", param=REFERENCES)
    if len(match.group(3)) > MAX_REFERENCE_BYTES * 4 // 3 + 4:
        raise InvalidOptionError(
            f"{where} is over {MAX_REFERENCE_BYTES // 1024} KB", param=REFERENCES
        )
    try:
        data = base64.b64decode(match.group(3), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidOptionError(f"{where} is not valid base64", param=REFERENCES) from None
    if not data:
        raise InvalidOptionError(f"{where} is empty", param=REFERENCES)
    return data


async def _voice(
    data: bytes, index: int, backend: Backend, limits: AudioLimits, tenant: Tenant
) -> list[float]:
    where = f"known_speaker_references[{index}]"
    clip_limits = replace(limits, max_duration_s=MAX_REFERENCE_S, max_bytes=MAX_REFERENCE_BYTES)
    try:
        decoded, held = await backend.admission.decode(audio.decode, io.BytesIO(data), clip_limits)
    except InvalidOptionError:
        raise
    except ServiceError as exc:
        if exc.retryable:
            raise  # the replica is busy, not the clip's fault
        raise InvalidOptionError(f"{where}: {exc.message}", param=REFERENCES) from None
    with held:
        seconds = len(decoded.samples) / decoded.sample_rate
        if seconds < MIN_REFERENCE_S:
            raise InvalidOptionError(
                f"{where} is {seconds:.1f} s long; a reference clip has "
                f"{MIN_REFERENCE_S:.0f} to {MAX_REFERENCE_S:.0f} s of speech",
                param=REFERENCES,
            )
        voice = await backend.voice(decoded.samples, tenant)
    if voice is None:
        raise InvalidOptionError(f"{where} holds no speech", param=REFERENCES)
    return voice
