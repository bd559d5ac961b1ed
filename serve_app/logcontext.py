"""Which job a log line is about: set around a job's run (and passed with its model calls to
the model replicas), added to every record by ``JobContextFilter``, so each line about a job
carries its id (key ``job``), ``attachment_id``, ``source`` and ``attempt`` (JSON keys with
LOG_FORMAT=json, key=value pairs in text). Plain logging and contextvars: no Ray."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class JobLog:
    job_id: str
    source: str
    attempt: int  # 0-based, as the retry count
    attachment_id: int | None = None  # the AMQP request's


_current: contextvars.ContextVar[JobLog | None] = contextvars.ContextVar(
    "whisper_job", default=None
)


def current() -> JobLog | None:
    return _current.get()


@contextmanager
def about(job: JobLog | None) -> Iterator[None]:
    """Lines logged inside (and in tasks and threads started inside) are about ``job``."""
    token = _current.set(job)
    try:
        yield
    finally:
        _current.reset(token)


def detached() -> contextvars.Context:
    """A context for a long-lived task started from inside a job's (a batcher, a watcher),
    whose lines are about no one job."""
    context = contextvars.copy_context()
    context.run(_current.set, None)
    return context


class JobContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        job = _current.get()
        if job is not None:
            for key, value in asdict(job).items():
                if value is not None:
                    # "job_id" on a record is Ray's own (its driver job), which Serve drops.
                    setattr(record, "job" if key == "job_id" else key, value)
        return True
