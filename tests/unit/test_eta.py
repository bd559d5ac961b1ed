"""Estimates from the backlog and the measured speed, and the speed meter: pure logic."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from serve_app.capacity.eta import Pending, backlog_s, retry_after_s, schedule
from serve_app.capacity.speed import SpeedMeter

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _after(eta_time: datetime) -> float:
    return (eta_time - T0).total_seconds()


def test_one_slot_runs_the_queue_one_job_after_another() -> None:
    pending = [
        Pending(100, running=True, id="a"),
        Pending(50, running=False, id="b"),
        Pending(30, running=False, id="c"),
    ]
    etas = schedule(pending, rate=10.0, now=T0)
    assert _after(etas["a"].completion) == pytest.approx(10)
    assert _after(etas["b"].start) == pytest.approx(10)
    assert _after(etas["b"].completion) == pytest.approx(15)
    assert (_after(etas["c"].start), _after(etas["c"].completion)) == pytest.approx((15, 18))


def test_jobs_running_together_share_the_rate_and_free_slots_in_turn() -> None:
    # Two slots (two jobs run now): 20 s and 60 s left at 10 a second, shared.
    pending = [
        Pending(20, running=True, id="a"),
        Pending(60, running=True, id="b"),
        Pending(40, running=False, id="c"),
    ]
    etas = schedule(pending, rate=10.0, now=T0)
    # a and b at 5 a second: a is done at 4 s; c takes its slot then.
    assert _after(etas["a"].completion) == pytest.approx(4)
    assert _after(etas["c"].start) == pytest.approx(4)
    # Then b (40 left) and c (40) at 5 a second each: both done 8 s later.
    assert _after(etas["b"].completion) == pytest.approx(12)
    assert _after(etas["c"].completion) == pytest.approx(12)
    # Everything is done when the whole backlog would be, at the full rate.
    assert max(_after(e.completion) for e in etas.values()) == pytest.approx(
        backlog_s(pending) / 10
    )


def test_sync_requests_take_a_share_of_the_rate_but_no_job_slot() -> None:
    pending = [
        Pending(30, running=True),  # a sync request: no id
        Pending(30, running=True, id="a"),
        Pending(10, running=False, id="b"),
    ]
    etas = schedule(pending, rate=10.0, now=T0)
    assert set(etas) == {"a", "b"}
    assert _after(etas["a"].completion) == pytest.approx(6)  # half the rate while both run
    assert _after(etas["b"].start) == pytest.approx(6)  # waits for a, not for the request


def test_a_tenants_job_starts_at_the_first_free_slot_ahead_of_another_tenants_flood() -> None:
    # Two slots, both key a's; a has four more queued, then key b's short job.
    pending = [
        Pending(20, running=True, id="a1", tenant="a"),
        Pending(60, running=True, id="a2", tenant="a"),
        *(Pending(60, running=False, id=f"a{n}", tenant="a") for n in range(3, 7)),
        Pending(10, running=False, id="b1", tenant="b"),
    ]
    etas = schedule(pending, rate=10.0, now=T0)
    # a1 is done at 4 s (5 a second); b1 takes its slot, not a3.
    assert _after(etas["b1"].start) == pytest.approx(4)
    # Then a's one job and b's share the rate by tenant: 5 a second each, b1 done 2 s later.
    assert _after(etas["b1"].completion) == pytest.approx(6)
    assert _after(etas["a3"].start) == pytest.approx(6)
    # The work is the same: everything is done when the whole backlog would be.
    assert max(_after(e.completion) for e in etas.values()) == pytest.approx(
        backlog_s(pending) / 10
    )
    # First come first served, b1 would have waited for a3 to a6.
    alone = schedule([replace(p, tenant="a") for p in pending], rate=10.0, now=T0)
    assert _after(alone["b1"].start) == pytest.approx(28)


def test_without_a_known_speed_nothing_is_estimated() -> None:
    assert schedule([Pending(10, running=False, id="a")], rate=0.0, now=T0) == {}


def test_retry_after_is_the_time_to_get_back_under_the_bound() -> None:
    assert retry_after_s(backlog=1300, bound=1000, rate=20) == 15
    assert retry_after_s(backlog=1000.5, bound=1000, rate=20) == 1  # never 0
    assert retry_after_s(backlog=1300, bound=1000, rate=None, fallback_s=15) == 15


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_meter_counts_busy_time_once_for_requests_that_overlap() -> None:
    clock = Clock()
    meter = SpeedMeter(half_life_s=1e9, clock=clock)
    assert meter.rate is None
    with meter.measure(30), meter.measure(30):
        clock.now += 4  # two 30 s requests decoded together in 4 s
    clock.now += 100  # idle: no busy time, the rate stays
    assert meter.rate == pytest.approx(15)
    with pytest.raises(RuntimeError), meter.measure(100):  # a failure is no speed
        clock.now += 4
        raise RuntimeError
    assert meter.rate == pytest.approx(60 / 8)


def test_old_work_fades_and_the_seed_is_soon_outweighed() -> None:
    clock = Clock()
    meter = SpeedMeter(half_life_s=60, clock=clock)
    meter.seed(audio_s=45, wall_s=1.5)  # 30x on the warm-up
    assert meter.rate == pytest.approx(30)
    for _ in range(5):
        with meter.measure(10):
            clock.now += 2  # real speech: 5x
    assert meter.rate == pytest.approx(5)
    clock.now += 600
    with meter.measure(10):
        clock.now += 1  # the machine got faster
    assert meter.rate == pytest.approx(10, rel=0.05)
