"""Fair shares between tenants: start-time fair queuing on audio seconds (pure logic)."""

from __future__ import annotations

from serve_app.capacity.fair import FairShare, Tenant, tenant_of


def serve(fair: FairShare, waiting: list[Tenant], rounds: int, cost: float = 1.0) -> list[str]:
    order = []
    by_id = {t.id: t for t in waiting}
    for _ in range(rounds):
        tenant = by_id[fair.next(list(by_id))]
        fair.charge(tenant, cost)
        order.append(tenant.id)
    return order


def test_waiting_tenants_take_turns_and_weights_set_their_shares() -> None:
    fair = FairShare()
    a, b = Tenant("a"), Tenant("b", weight=3)
    fair.arrive(a, [])
    fair.arrive(b, ["a"])
    order = serve(fair, [a, b], 40)
    assert order[:2] == ["a", "b"]  # level at first: the first given goes first
    assert order.count("b") == 3 * order.count("a")


def test_an_idle_tenant_earns_no_credit_and_loses_none() -> None:
    fair = FairShare()
    a, b = Tenant("a"), Tenant("b")
    fair.arrive(a, [])
    serve(fair, [a], 100)  # a alone for a long while
    fair.arrive(b, ["a"])  # b comes: level with a, not 100 seconds ahead or behind
    assert serve(fair, [a, b], 6).count("b") == 3
    fair.forget_idle(["a"])  # b's work is done
    serve(fair, [a], 50)
    fair.arrive(b, ["a"])
    assert serve(fair, [a, b], 6).count("b") == 3  # not 50 turns in a row to catch up


def test_one_tenant_alone_is_served_in_order() -> None:
    fair = FairShare()
    only = Tenant()
    fair.arrive(only, [])
    assert serve(fair, [only], 3) == ["*", "*", "*"]


def test_a_keys_owner_id_is_its_tenant_and_the_amqp_lane_is_one() -> None:
    assert tenant_of("0f3a") == Tenant("0f3a")
    assert tenant_of(None) == tenant_of(None, "http") == Tenant()  # no key, or an admin key
    assert tenant_of(None, "amqp") == tenant_of("ignored", "amqp") == Tenant("amqp")
