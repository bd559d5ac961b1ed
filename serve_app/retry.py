"""One retry policy for everything the service tries again: a job (the contract's attempts,
spaced by the broker's retry queue), a part of a long file, a webhook, the record of a result
that went out. Each names its numbers where it is configured; how a try counts as the last
and how long to wait after a failure is decided here alone."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Growth(enum.Enum):
    FIXED = "fixed"  # b, b, b, ...
    LINEAR = "linear"  # b, 2b, 3b, ...
    EXPONENTIAL = "exponential"  # b, 2b, 4b, ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int  # tries in all, the first one included
    backoff_s: float  # the wait after the first failure
    growth: Growth = Growth.LINEAR

    def is_final(self, attempt: int) -> bool:
        """Whether the given (1-based) attempt is the last one allowed."""
        return attempt >= self.attempts

    def delay_s(self, failed: int) -> float:
        """The wait after the given (1-based) failed attempt."""
        if self.growth is Growth.FIXED:
            return self.backoff_s
        if self.growth is Growth.LINEAR:
            return self.backoff_s * failed
        return self.backoff_s * 2.0 ** (failed - 1)
