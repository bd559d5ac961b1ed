from __future__ import annotations

import pytest

from serve_app.pools import Pool, PoolRouter


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
