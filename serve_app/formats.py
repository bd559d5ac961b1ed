"""Result out: a Transcript rendered as each OpenAI response format."""

from __future__ import annotations

import json
from typing import Any

from serve_app.schemas import ResponseFormat, Segment, Transcript, VerboseTranscription

MEDIA_TYPES: dict[ResponseFormat, str] = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "diarized_json": "application/json",
}


def render(
    transcript: Transcript,
    response_format: ResponseFormat,
    words: bool = False,
    logprobs: bool = False,
) -> str:
    """``words``: verbose_json's word list; ``logprobs``: json's token log probabilities."""
    if response_format == "json":
        body: dict[str, Any] = {"text": transcript.text}
        if logprobs:
            body["logprobs"] = token_logprobs(transcript.segments)
        return json.dumps({**body, "usage": usage(transcript)}, ensure_ascii=False)
    if response_format == "verbose_json":
        return verbose(transcript, words).model_dump_json(exclude_none=True)
    if response_format == "text":
        return transcript.text
    if response_format == "srt":
        return to_srt(transcript)
    if response_format == "diarized_json":
        return json.dumps(diarized(transcript), ensure_ascii=False)
    return to_vtt(transcript)


def token_logprobs(segments: list[Segment]) -> list[dict[str, Any]]:
    """OpenAI's logprobs: every token of the text, in order (``include[]=logprobs``)."""
    return [
        token.model_dump()
        for segment in segments
        for word in segment.words or []
        for token in word.logprobs or []
    ]


def usage(transcript: Transcript) -> dict[str, Any]:
    """OpenAI's usage of audio-priced models: the input audio's duration."""
    return {"type": "duration", "seconds": round(transcript.duration, 3)}


def diarized(transcript: Transcript) -> dict[str, Any]:
    """OpenAI's diarized_json: segments with their speaker (A, B, ...)."""
    return {
        "task": "transcribe",
        "duration": transcript.duration,
        "text": transcript.text,
        "segments": [
            {
                "type": "transcript.text.segment",
                "id": f"seg_{s.id:03d}",
                "start": s.start,
                "end": s.end,
                "text": s.text.strip(),
                "speaker": s.speaker or "",
            }
            for s in transcript.segments
        ],
        "usage": usage(transcript),
        **({"warnings": transcript.warnings} if transcript.warnings else {}),
    }


def verbose(transcript: Transcript, words: bool = False) -> VerboseTranscription:
    segments = [s.model_copy(update={"words": None}) for s in transcript.segments]
    return VerboseTranscription(
        task=transcript.task,
        language=transcript.language,
        duration=transcript.duration,
        text=transcript.text,
        segments=segments,
        words=transcript.words if words else None,
        warnings=transcript.warnings,
        usage=usage(transcript),
    )


def to_srt(transcript: Transcript) -> str:
    blocks = [
        f"{n}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n"
        f"{f'[{s.speaker}] ' if s.speaker else ''}{s.text.strip()}\n"
        for n, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    # A WebVTT voice span names the speaker: players show it, and it is the cue's prefix.
    blocks = [
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n"
        f"{f'<v {s.speaker}>' if s.speaker else ''}{s.text.strip()}\n"
        for s in transcript.segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def _timestamp(seconds: float, decimal_marker: str) -> str:
    millis = round(max(seconds, 0.0) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"
