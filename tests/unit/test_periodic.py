"""Figures read on demand from a source that fails now and then."""

from __future__ import annotations

import logging

import pytest

from serve_app.periodic import Recent


async def test_a_failed_read_answers_with_the_last_value_while_it_is_recent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    monkeypatch.setattr("serve_app.periodic.time.monotonic", lambda: clock[0])
    answers: list[object] = [RuntimeError("busy"), 1, RuntimeError("busy"), RuntimeError("busy")]

    async def read() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, int)
        return answer

    recent = Recent(read, stale_s=30, what="read the figure", log=logging.getLogger("t"))
    assert await recent.get() is None  # nothing read yet
    assert await recent.get() == 1
    clock[0] += 29
    assert await recent.get() == 1  # failed: the last value stands in
    clock[0] += 2
    assert await recent.get() is None  # too old to stand in
    assert sum("Could not read the figure" in r.getMessage() for r in caplog.records) == 3
