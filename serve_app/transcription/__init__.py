"""A file's transcription policy (``service``) behind a typed model port (``port``): short
audio in one call, long audio fanned out in units across replicas, a job from a path, and
speakers (diarization beside transcription, merged by time)."""
