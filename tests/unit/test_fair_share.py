"""Fair shares between tenants: start-time fair queuing on audio seconds, and a gate that lets
waiters through in that order (pure logic)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.capacity.fair import FairGate, FairShare, Tenant, tenant_of, yield_to


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
    fair.arrive(a)
    fair.arrive(b)
    order = serve(fair, [a, b], 40)
    assert order[:2] == ["a", "b"]  # level at first: the first given goes first
    assert order.count("b") == 3 * order.count("a")


def test_an_idle_tenant_earns_no_credit_and_loses_none() -> None:
    fair = FairShare()
    a, b = Tenant("a"), Tenant("b")
    fair.arrive(a)
    serve(fair, [a], 100)  # a alone for a long while
    fair.arrive(b)  # b comes: where the clock is, not 100 seconds ahead of a or behind
    assert serve(fair, [a, b], 6).count("b") == 3
    fair.forget_idle(["a"])  # b's work is done
    serve(fair, [a], 50)
    fair.arrive(b)
    assert serve(fair, [a, b], 6).count("b") == 3  # not 50 turns in a row to catch up


def test_one_tenant_alone_is_served_in_order() -> None:
    fair = FairShare()
    only = Tenant()
    fair.arrive(only)
    assert serve(fair, [only], 3) == ["*", "*", "*"]


def test_a_keys_owner_id_is_its_tenant_and_the_amqp_lane_is_one() -> None:
    assert tenant_of("0f3a") == Tenant("0f3a")
    assert tenant_of(None) == tenant_of(None, "http") == Tenant()  # no key, or an admin key
    assert tenant_of(None, "amqp") == tenant_of("ignored", "amqp") == Tenant("amqp")


class Full(Exception):
    def __init__(self, waiting: int, of_the_tenant: bool) -> None:
        super().__init__(waiting, of_the_tenant)
        self.of_the_tenant = of_the_tenant


async def test_a_gate_lets_another_tenant_in_ahead_of_a_floods_queue() -> None:
    gate = FairGate(1, Full)
    order: list[str] = []
    release = asyncio.Event()

    async def work(tenant: str, name: str) -> None:
        async with gate.slot(Tenant(tenant), 60.0):
            order.append(name)
            await release.wait()

    tasks = [asyncio.create_task(work("a", f"a{i}")) for i in range(5)]
    await asyncio.sleep(0.01)  # a0 holds the slot, a1-a4 wait
    tasks.append(asyncio.create_task(work("b", "b0")))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a0", "b0", "a1", "a2", "a3", "a4"]


async def test_a_gates_queue_is_bounded_overall_and_per_tenant() -> None:
    gate = FairGate(1, Full, max_waiting=3, max_waiting_per_tenant=2)
    release = asyncio.Event()

    async def work(tenant: str) -> None:
        async with gate.slot(Tenant(tenant), 1.0):
            await release.wait()

    held = [asyncio.create_task(work("a")) for _ in range(3)]  # one holds, two wait
    await asyncio.sleep(0.01)
    with pytest.raises(Full) as refused:
        await work("a")  # a third of a's waiting
    assert refused.value.of_the_tenant
    b = asyncio.create_task(work("b"))
    await asyncio.sleep(0.01)
    with pytest.raises(Full) as refused:
        await work("c")  # three waiting in all
    assert not refused.value.of_the_tenant
    assert gate.waiting == 3
    release.set()
    await asyncio.gather(*held, b)
    assert gate.waiting == 0


async def test_a_waiter_that_gives_up_leaves_and_a_granted_one_passes_its_slot_on() -> None:
    gate = FairGate(1, Full)
    release = asyncio.Event()
    entered: list[str] = []

    async def work(name: str) -> None:
        async with gate.slot(Tenant(name), 1.0):
            entered.append(name)
            await release.wait()

    first = asyncio.create_task(work("first"))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(work("gone"))
    late = asyncio.create_task(work("late"))
    await asyncio.sleep(0.01)
    gone.cancel()
    release.set()
    await asyncio.gather(first, late)
    assert entered == ["first", "late"]
    assert gone.cancelled() and gate.waiting == 0
    # Granted, then cancelled before it ran: the slot is not lost.
    release.clear()
    holder = asyncio.create_task(work("holder"))
    await asyncio.sleep(0.01)
    unlucky = asyncio.create_task(work("unlucky"))
    await asyncio.sleep(0.01)
    release.set()
    await holder
    unlucky.cancel()  # granted by holder's exit, cancelled before it resumed
    await asyncio.gather(unlucky, return_exceptions=True)
    release.clear()
    after = asyncio.create_task(work("after"))
    await asyncio.sleep(0.01)
    assert entered[-1] == "after"
    release.set()
    await after


def test_a_job_slot_goes_to_the_tenant_with_a_job_waiting_and_fewest_running() -> None:
    running = {"a": 5, "b": 1, "c": 2}
    assert yield_to("a", running, {"b", "c"}) == "b"
    assert yield_to("c", running, {"a", "b"}) == "b"
    assert yield_to("b", running, {"a", "c"}) is None  # fewest already
    assert yield_to("a", running, set()) is None  # nobody waits: never held back
    assert yield_to("a", {"a": 1, "b": 1}, {"b"}) is None  # ties keep the slot
    assert yield_to("new", running, {"a"}) is None  # nothing running yet
    # Weights: a of weight 5 with 5 running is level with b running 1.
    assert yield_to("a", running, {"b"}, weight=lambda t: 5.0 if t == "a" else 1.0) is None
