from __future__ import annotations

import pytest

from serve_app.capacity.pools import Pool, PoolRouter, PoolState, would_serve
from serve_app.errors import NoReplicaError


def test_single_pool_takes_everything() -> None:
    router = PoolRouter([Pool("cpu", "c")])
    with router.lease() as a, router.lease() as b:
        assert a.name == b.name == "cpu"
        assert a.in_flight == 2
    assert router.pools[0].in_flight == 0


def test_weighted_least_loaded() -> None:
    router = PoolRouter([Pool("gpu", "g", weight=4), Pool("cpu", "c", weight=1)])
    picked = []
    leases = [router.lease() for _ in range(10)]
    for lease in leases:
        picked.append(lease.__enter__().name)
    # gpu wins ties and takes 4 per cpu request while both are busy
    assert picked.count("gpu") == 8 and picked.count("cpu") == 2
    for lease in leases:
        lease.__exit__(None, None, None)
    assert all(p.in_flight == 0 for p in router.pools)


def test_lease_released_on_error() -> None:
    router = PoolRouter([Pool("cpu", "c")])
    with pytest.raises(RuntimeError), router.lease():
        raise RuntimeError("replica died")
    assert router.pools[0].in_flight == 0


def test_needs_a_pool() -> None:
    with pytest.raises(ValueError):
        PoolRouter([])


def _cluster() -> PoolRouter[str]:
    """A GPU pool scaled to zero beside a CPU pool with two running replicas."""
    router = PoolRouter(
        [Pool("gpu", "g", weight=8), Pool("cpu", "c")], busy_per_replica=2, wake_every_s=30
    )
    router.observe({"gpu": ("HEALTHY", 0), "cpu": ("HEALTHY", 2)})
    return router


def test_what_serve_says_becomes_a_pool_state() -> None:
    pool = Pool("p", "t")
    assert pool.state is PoolState.UNKNOWN
    pool.observe("UPSCALING", 1)
    assert pool.state is PoolState.RUNNING and pool.running == 1
    pool.observe("HEALTHY", 0)
    assert pool.state is PoolState.ASLEEP
    for status in ("UNHEALTHY", "UPSCALING", "UPDATING", None):
        pool.observe(status, 0)
        assert pool.state is PoolState.DOWN, status


def test_settled_while_some_pool_runs_all_it_asked_for_and_the_rest_sleep() -> None:
    router = PoolRouter([Pool("gpu", "g"), Pool("cpu", "c")])
    assert not router.settled()  # nothing seen yet
    router.observe({"gpu": ("HEALTHY", 0, "", 0), "cpu": ("HEALTHY", 2, "", 2)})
    assert router.settled()
    router.observe({"gpu": ("UPSCALING", 0, "", 1), "cpu": ("HEALTHY", 2, "", 2)})
    assert not router.settled()  # a sleeper is waking
    router.observe({"gpu": ("HEALTHY", 1, "", 1), "cpu": ("UPSCALING", 2, "", 3)})
    assert not router.settled()  # a replica is coming
    router.observe({"gpu": ("HEALTHY", 0, "", 0), "cpu": ("HEALTHY", 0, "", 0)})
    assert not router.settled()  # nothing serves: the client looks often
    router.observe({"gpu": ("UNHEALTHY", 0, "", 1), "cpu": ("HEALTHY", 1, "", 1)})
    assert not router.settled()  # a pool is down


def test_a_sleeping_pool_is_woken_by_a_busy_cluster_not_by_one_request() -> None:
    router = _cluster()
    gpu, cpu = router.pools
    leases = [router.lease() for _ in range(3)]
    assert [lease.__enter__().name for lease in leases] == ["cpu"] * 3
    assert router.to_wake(now=100) == []  # 3 in flight on 2 replicas: not busy yet
    leases.append(router.lease())
    leases[-1].__enter__()
    assert router.to_wake(now=100) == [gpu]  # 4 = 2 per replica: wake the GPU pool
    assert router.to_wake(now=110) == []  # once per wake_every_s
    assert router.to_wake(now=131) == [gpu]
    assert cpu.in_flight == 4 and gpu.in_flight == 0  # nobody waited for the cold start


def test_a_woken_pool_is_preferred_once_it_runs() -> None:
    router = _cluster()
    gpu = router.pools[0]
    gpu.observe("UPSCALING", 1)
    leases = [router.lease() for _ in range(9)]  # held: a dropped lease gives its slot back
    picked = [lease.__enter__().name for lease in leases]
    assert picked.count("gpu") == 8 and picked.count("cpu") == 1


def test_with_nothing_serving_sleepers_are_woken_and_nobody_is_queued_on_them() -> None:
    router = _cluster()
    gpu, cpu = router.pools
    router.observe({"gpu": ("HEALTHY", 0), "cpu": ("UNHEALTHY", 0)})  # the CPU node died
    assert router.to_wake(now=100) == [gpu]  # started for whoever comes back later
    with pytest.raises(NoReplicaError) as info:
        router.pick()
    assert info.value.retry_after_s > 0 and "No model replica is running" in info.value.message
    # The GPU pool starts a replica, or cannot (no GPU node): either way it is not serving
    # until a replica runs, and the CPU pool serves again as soon as its node is back.
    router.observe({"gpu": ("UPSCALING", 0), "cpu": ("UPSCALING", 0)})
    assert gpu.state is PoolState.DOWN and router.to_wake(now=200) == []
    with pytest.raises(NoReplicaError):
        router.pick()
    router.observe({"gpu": ("UPSCALING", 0), "cpu": ("UPSCALING", 1)})
    assert router.pick() is cpu
    router.observe({})  # the app is gone from Serve's status
    assert all(p.state is PoolState.DOWN for p in router.pools)
    assert all(p.in_flight == 0 for p in router.pools)


def test_queued_jobs_wake_the_preferred_sleeper_and_the_next_only_if_it_never_serves() -> None:
    router = PoolRouter(
        [Pool("gpu", "g", weight=8), Pool("cpu", "c")], wake_every_s=30, one_wake_at_a_time=True
    )
    gpu, cpu = router.pools
    router.observe({"gpu": ("HEALTHY", 0), "cpu": ("HEALTHY", 0)})  # both at zero when idle
    assert router.to_wake(now=100) == [gpu]  # not the CPU pool: the GPU pool takes the work
    router.observe({"gpu": ("UPSCALING", 0, ""), "cpu": ("HEALTHY", 0, "")})
    assert router.to_wake(now=110) == []
    assert router.to_wake(now=200) == []  # a slow start is still a start
    router.observe({"gpu": ("UPSCALING", 1, ""), "cpu": ("HEALTHY", 0, "")})
    leases = [router.lease() for _ in range(8)]
    assert {lease.__enter__().name for lease in leases} == {"gpu"}
    assert router.to_wake(now=300) == []  # busy, but whether it needs help is the policy's
    for lease in leases:
        lease.__exit__(None, None, None)
    router.observe({"gpu": ("UPSCALING", 0, ""), "cpu": ("HEALTHY", 0, "")})
    # Serve says no node has room for it (no GPU node): the next pool is woken.
    waits = "Deployment 'gpu' has 1 replicas that have taken more than 30s to be scheduled."
    router.observe({"gpu": ("UPSCALING", 0, waits), "cpu": ("HEALTHY", 0, "")})
    assert router.to_wake(now=210) == [cpu]
    assert router.to_wake(now=230) == []


def test_a_pool_is_starting_only_while_it_can_place_what_it_asked_for() -> None:
    router = PoolRouter([Pool("gpu", "g", weight=8), Pool("cpu", "c")])
    router.observe({"gpu": ("HEALTHY", 0, ""), "cpu": ("UPSCALING", 0, "")})
    assert router.starting()  # the CPU replica is loading: an HTTP request may wait
    waiting_for_a_node = (
        "Deployment 'TranscriberCPU' in application 'whisper' has 1 replicas that have taken "
        "more than 30s to be scheduled. This may be due to waiting for the cluster to auto-scale"
    )
    router.observe({"gpu": ("HEALTHY", 0, ""), "cpu": ("UPSCALING", 0, waiting_for_a_node)})
    assert not router.starting()  # no node has room: 503 at once, not after a wait
    router.observe({"gpu": ("HEALTHY", 0, ""), "cpu": ("HEALTHY", 1, "")})
    assert not router.starting() and router.pick().name == "cpu"


def test_ready_means_a_request_would_be_served_now() -> None:
    # The GPU pool settled at zero and the CPU pool still starting: not ready (it was).
    assert not would_serve({"TranscriberGPU": {}, "TranscriberCPU": {"STARTING": 1}})
    assert would_serve({"TranscriberGPU": {}, "TranscriberCPU": {"RUNNING": 1, "STARTING": 1}})
    assert not would_serve({})
