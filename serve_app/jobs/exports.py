"""Results written back to object storage (RESULTS_BUCKET): a finished job's transcript in
the format it asked for, and beside it a JSON copy of the whole result, under
``RESULTS_PREFIX<job id>/``. Written before the job is recorded as completed, so a job view
or an AMQP result that names them never names objects that are not there; the same names on
every try, so a retry overwrites instead of leaving copies."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app import formats
from serve_app.errors import InvalidOptionError
from serve_app.media.objects import Grant
from serve_app.media.storage import ObjectStorage
from serve_app.schemas import Job, ResponseFormat, Transcript
from serve_app.settings import Settings

DEFAULT_FORMAT: ResponseFormat = "text"
EXTENSIONS: dict[ResponseFormat, str] = {
    "text": "txt",
    "json": "json",
    "verbose_json": "json",
    "diarized_json": "json",
    "srt": "srt",
    "vtt": "vtt",
}


def check_format(response_format: ResponseFormat | None, diarize: bool) -> None:
    """A job's format is checked when it is submitted, not when its result is written."""
    if response_format == "diarized_json" and not diarize:
        raise InvalidOptionError(
            "response_format diarized_json needs diarize=true", param="response_format"
        )


@dataclass(frozen=True)
class ResultExport:
    storage: ObjectStorage
    place: Grant  # the bucket and prefix

    @classmethod
    def from_settings(
        cls, settings: Settings, storage: ObjectStorage | None
    ) -> ResultExport | None:
        place = settings.results_place
        return None if place is None or storage is None else cls(storage, place)

    def write(self, job: Job, transcript: Transcript) -> dict[str, str]:
        """Both objects written (StorageUnavailableError if either could not be); their
        s3:// names by role. Blocking."""
        fmt = job.response_format or DEFAULT_FORMAT
        body = formats.render(
            transcript, fmt, words=job.options.word_timestamps, logprobs=job.options.logprobs
        )
        transcript_ref = self.place.ref(f"{job.id}/transcript.{EXTENSIONS[fmt]}")
        copy_ref = self.place.ref(f"{job.id}/result.json")
        self.storage.put(transcript_ref, body.encode(), formats.MEDIA_TYPES[fmt])
        copy = transcript.model_dump_json(exclude_none=True).encode()
        self.storage.put(copy_ref, copy, "application/json")
        return {"transcript": str(transcript_ref), "json": str(copy_ref)}
