"""Data shapes shared by the HTTP and AMQP edges.

faster-whisper objects are converted into these once, in ``transcriber``; nothing past the core
sees a faster-whisper type.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Task = Literal["transcribe", "translate"]
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class Word(BaseModel):
    start: float
    end: float
    word: str
    probability: float


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


class Transcript(BaseModel):
    """What the model produced for one piece of audio."""

    text: str
    language: str
    language_probability: float
    duration: float
    segments: list[Segment]
    model: str
    task: Task = "transcribe"

    @property
    def words(self) -> list[Word]:
        return [word for segment in self.segments for word in segment.words or []]


class TranscribeOptions(BaseModel):
    """Decoding options a client may set; the rest come from settings."""

    model: str | None = None
    language: str | None = None
    task: Task = "transcribe"
    prompt: str | None = None
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    word_timestamps: bool = False


class VerboseTranscription(BaseModel):
    """OpenAI's ``verbose_json`` response."""

    task: Task
    language: str
    duration: float
    text: str
    segments: list[Segment]
    words: list[Word] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "whisper-serve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
