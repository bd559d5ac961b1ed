"""A file's transcription policy, above the model replicas: long audio fanned out in units across
them, a job from a path, and speakers (diarization beside transcription, merged by time)."""
