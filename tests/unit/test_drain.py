"""Replicas per model pool from the backlog in audio seconds and a drain deadline
(serve_app.capacity.drain): pure logic."""

from __future__ import annotations

import pytest

from serve_app.capacity.drain import PoolView, Smoothed, assumed_speeds, drain_targets

CPU = PoolView("TranscriberCPU", min_replicas=1, max_replicas=8, speed=10.0)
GPU = PoolView("TranscriberGPU", min_replicas=0, max_replicas=4, speed=100.0, weight=8)


def test_audio_seconds_not_requests_decide() -> None:
    # Ten 1-hour files against ten 5-second clips, drained within 10 minutes at 10x each.
    assert drain_targets(10 * 3600, [CPU], 600) == {"TranscriberCPU": 6}
    assert drain_targets(10 * 5, [CPU], 600) == {"TranscriberCPU": 1}


def test_a_shorter_deadline_wants_more_replicas() -> None:
    backlog = 4 * 3600
    wanted = [drain_targets(backlog, [CPU], drain)["TranscriberCPU"] for drain in (1800, 900, 600)]
    assert wanted == [1, 2, 3]


def test_pools_are_filled_in_order_and_the_next_takes_the_overflow() -> None:
    # The GPU pool drains 60,000 s in 10 minutes per replica; past its 4, the CPU pool.
    assert drain_targets(100_000, [GPU, CPU], 600) == {"TranscriberGPU": 2, "TranscriberCPU": 1}
    assert drain_targets(300_000, [GPU, CPU], 600) == {"TranscriberGPU": 4, "TranscriberCPU": 8}
    assert drain_targets(260_000, [GPU, CPU], 600) == {"TranscriberGPU": 4, "TranscriberCPU": 4}


def test_an_idle_backlog_leaves_each_pool_at_its_minimum() -> None:
    assert drain_targets(0, [GPU, CPU], 600) == {"TranscriberGPU": 0, "TranscriberCPU": 1}


def test_a_pool_that_cannot_place_its_replicas_hands_its_share_on() -> None:
    stuck = PoolView("TranscriberGPU", 0, 4, speed=100.0, weight=8, usable=0)
    # It still asks for its replicas, and the CPU pool takes the whole backlog meanwhile.
    assert drain_targets(30_000, [stuck, CPU], 600) == {"TranscriberGPU": 1, "TranscriberCPU": 5}


def test_a_pool_never_measured_is_taken_by_its_weight() -> None:
    fresh_gpu = PoolView("TranscriberGPU", 0, 4, speed=None, weight=8)
    assert assumed_speeds([fresh_gpu, CPU]) == {"TranscriberGPU": 80.0, "TranscriberCPU": 10.0}
    nothing_measured = PoolView("TranscriberCPU", 1, 8, speed=None)
    assert assumed_speeds([nothing_measured]) == {"TranscriberCPU": 1.0}


def test_the_backlog_rises_at_once_and_falls_by_half_lives() -> None:
    backlog = Smoothed(half_life_s=60)
    assert backlog.update(1000, now=0) == 1000
    assert backlog.update(0, now=60) == pytest.approx(500)
    assert backlog.update(0, now=120) == pytest.approx(250)
    assert backlog.update(4000, now=121) == 4000


def test_a_replica_is_held_only_for_a_real_share_of_its_work() -> None:
    # 6,000 s is one CPU replica's work in 10 minutes: 40% of it holds none past the minimum.
    gpu_at_zero = PoolView("TranscriberGPU", 0, 4, speed=10.0)
    assert drain_targets(2400, [gpu_at_zero], 600, share=0.5) == {"TranscriberGPU": 0}
    assert drain_targets(3600, [gpu_at_zero], 600, share=0.5) == {"TranscriberGPU": 1}
    assert drain_targets(2400, [gpu_at_zero], 600) == {"TranscriberGPU": 1}
