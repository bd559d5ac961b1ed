"""The one retry policy (serve_app.retry) and where its numbers come from."""

from __future__ import annotations

from ingest import contract as c
from serve_app.jobs.service import RECORD_RETRIES
from serve_app.retry import Growth, RetryPolicy
from serve_app.transcription.fanout import PART_RETRIES


def test_waits_grow_as_the_policy_says() -> None:
    fixed = RetryPolicy(4, 5.0, Growth.FIXED)
    linear = RetryPolicy(4, 1.0, Growth.LINEAR)
    doubling = RetryPolicy(4, 2.0, Growth.EXPONENTIAL)
    assert [fixed.delay_s(n) for n in (1, 2, 3)] == [5, 5, 5]
    assert [linear.delay_s(n) for n in (1, 2, 3)] == [1, 2, 3]
    assert [doubling.delay_s(n) for n in (1, 2, 3)] == [2, 4, 8]


def test_the_last_attempt_is_the_policys_count() -> None:
    policy = RetryPolicy(3, 1.0)
    assert [policy.is_final(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert RetryPolicy(1, 1.0).is_final(1)


def test_the_services_numbers() -> None:
    # The Whisper-Local contract: three attempts, each after the retry queue's 5 s TTL.
    assert RetryPolicy(3, 5.0, Growth.FIXED) == c.JOB_RETRIES
    assert not c.JOB_RETRIES.is_final(c.MAX_RETRIES) and c.JOB_RETRIES.is_final(c.MAX_RETRIES + 1)
    assert RetryPolicy(3, 1.0, Growth.LINEAR) == PART_RETRIES
    assert RetryPolicy(3, 0.5, Growth.LINEAR) == RECORD_RETRIES
