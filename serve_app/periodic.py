"""A step run every few seconds for as long as a replica lives (reading the broker's queues,
the backlog): a failure is logged once per outage, not every time, and the next try comes on
schedule, so a figure goes stale while its source is down instead of the loop dying."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def every(
    every_s: float, step: Callable[[], Awaitable[object]], what: str, log: logging.Logger
) -> None:
    """Run ``step`` every ``every_s`` until cancelled; ``what`` names it in the warning."""
    failing = False
    while True:
        try:
            await step()
            failing = False
        except Exception as exc:  # the source went away: logged once, tried again next time
            if not failing:
                log.warning("Could not %s: %r", what, exc)
            failing = True
        await asyncio.sleep(every_s)
