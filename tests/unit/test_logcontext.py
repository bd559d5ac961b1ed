"""Which job a log line is about, carried by contextvars into tasks and threads: pure logic."""

from __future__ import annotations

import asyncio
import logging

from serve_app import logcontext
from serve_app.logcontext import JobContextFilter, JobLog


def _record() -> logging.LogRecord:
    record = logging.LogRecord("serve_app.x", logging.INFO, __file__, 1, "m", None, None)
    JobContextFilter().filter(record)
    return record


async def test_lines_inside_a_job_carry_its_ids_in_tasks_and_threads() -> None:
    job = JobLog("abc", "amqp", 1, attachment_id=42)
    assert not hasattr(_record(), "job")
    with logcontext.about(job):
        record = _record()
        in_thread = await asyncio.to_thread(_record)
        in_task = await asyncio.create_task(_later())
        detached = await asyncio.create_task(_later(), context=logcontext.detached())
    for r in (record, in_thread, in_task):
        assert (r.job, r.source, r.attempt, r.attachment_id) == ("abc", "amqp", 1, 42)  # type: ignore[attr-defined]
    assert not hasattr(detached, "job")
    assert not hasattr(_record(), "job")  # reset once the job's run is over


async def _later() -> logging.LogRecord:
    return _record()


def test_an_http_job_has_no_attachment_id() -> None:
    with logcontext.about(JobLog("j", "http", 0)):
        record = _record()
    assert record.job == "j" and not hasattr(record, "attachment_id")  # type: ignore[attr-defined]
