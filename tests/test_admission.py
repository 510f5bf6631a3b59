"""The admission queue's adaptive slots (service/queue.py): requests that hold their slot past the
target close slots, requests within it open them again, and waiters get exactly the slots open.
A fake clock decides every hold time: nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio

from service.queue import AdmissionQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def hold(queue: AdmissionQueue, clock: Clock, seconds: float) -> None:
    async with queue.slot():
        clock.now += seconds


def test_slow_requests_close_slots_and_fast_ones_open_them_again() -> None:
    clock = Clock()
    changes: list[tuple[int, int, int]] = []
    queue = AdmissionQueue(16, 32, target_hold_s=20.0, clock=clock,
                           on_change=lambda *state: changes.append(state))
    assert queue.slots == 16 and changes == [(0, 0, 16)]

    async def go() -> None:
        await hold(queue, clock, 40.0)  # past the target: a quarter of the slots close
        assert queue.slots == 12
        await hold(queue, clock, 30.0)  # 30 s later: another signal, another cut
        assert queue.slots == 9
        clock.now += 1.0
        queue.limit = 9.0
        await hold(queue, clock, 25.0)
        assert queue.slots == 6
        for _ in range(200):  # within the target: 1/limit each, back up to the bound and no further
            await hold(queue, clock, 1.0)
        assert queue.slots == 16 and queue.limit == 16.0

    asyncio.run(go())
    assert changes[-1] == (0, 0, 16)


def test_a_batch_finishing_late_together_is_one_cut() -> None:
    clock = Clock()
    queue = AdmissionQueue(16, 32, target_hold_s=20.0, clock=clock)

    async def go() -> None:
        done = asyncio.Event()

        async def late(started: asyncio.Event) -> None:
            async with queue.slot():
                started.set()
                await done.wait()  # they all end at the same instant

        clock.now = 100.0
        events = [asyncio.Event() for _ in range(8)]
        tasks = [asyncio.create_task(late(e)) for e in events]
        await asyncio.gather(*(e.wait() for e in events))
        clock.now = 150.0  # each held its slot 50 s
        done.set()
        await asyncio.gather(*tasks)

    asyncio.run(go())
    assert queue.slots == 12  # not 16 * 0.75**8


def test_waiters_get_only_the_slots_open() -> None:
    clock = Clock()
    queue = AdmissionQueue(4, 8, target_hold_s=20.0, clock=clock)
    queue.limit = 2.0  # two of four open
    order: list[str] = []

    async def go() -> None:
        gate = asyncio.Event()

        async def job(name: str) -> None:
            async with queue.slot():
                order.append(f"start {name}")
                await gate.wait()

        tasks = [asyncio.create_task(job(n)) for n in "abcd"]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert (queue.inflight, queue.waiting) == (2, 2)
        queue.limit = 4.0  # opened (as fast requests would): the next release lets both waiters in
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(go())
    assert order[:2] == ["start a", "start b"] and sorted(order[2:]) == ["start c", "start d"]
    assert (queue.inflight, queue.waiting) == (0, 0)


def test_the_expected_wait_counts_the_slots_open() -> None:
    queue = AdmissionQueue(16, 32, target_hold_s=20.0)
    queue.hold_s = 20.0
    assert queue.expected_wait_s(0) == 20.0 / 16
    queue.limit = 4.0
    assert queue.expected_wait_s(3) == 4 * 20.0 / 4


def test_without_a_target_the_slots_never_change() -> None:
    clock = Clock()
    queue = AdmissionQueue(3, 3, clock=clock)

    async def go() -> None:
        for seconds in (100.0, 200.0, 0.1):
            await hold(queue, clock, seconds)

    asyncio.run(go())
    assert queue.slots == 3 and queue.limit == 3.0


def test_a_waiter_that_can_no_longer_make_its_deadline_is_refused_when_slots_close() -> None:
    import pytest

    from extractor.errors import QueueFull

    clock = Clock()
    queue = AdmissionQueue(2, 8, target_hold_s=20.0, clock=clock)
    queue.hold_s = 20.0

    async def go() -> None:
        finish = {name: asyncio.Event() for name in "ab"}

        async def job(name: str) -> None:
            async with queue.slot():
                await finish[name].wait()

        running = [asyncio.create_task(job(n)) for n in "ab"]
        await asyncio.sleep(0)
        waiter = asyncio.create_task(queue._acquire(45.0))  # 0 + 10 s wait + 20 s hold: in time
        await asyncio.sleep(0)
        assert queue.waiting == 1
        clock.now = 40.0  # `a` held its slot 40 s: a slot closes, holds look longer, and time has passed
        finish["a"].set()
        await running[0]
        assert queue.slots == 1 and queue.waiting == 0
        with pytest.raises(QueueFull, match="deadline"):
            await waiter
        assert queue.inflight == 1  # only `b`: the refused waiter took no slot
        finish["b"].set()
        await running[1]
        assert queue.inflight == 0

    asyncio.run(go())


def test_a_waiter_is_refused_once_no_extraction_of_the_usual_length_could_start_in_time() -> None:
    """Nothing is released (every slot stuck on a long request): the waiter wakes when only
    `hold_s` is left of its deadline and is refused, instead of waiting to its deadline."""
    import pytest

    from extractor.errors import QueueFull

    queue = AdmissionQueue(1, 8)  # real clock: the waiter's own timer
    queue.hold_s = 0.2

    async def go() -> None:
        stuck = asyncio.Event()

        async def job() -> None:
            async with queue.slot():
                await stuck.wait()

        running = asyncio.create_task(job())
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="deadline"):
            await queue._acquire(0.5)
        assert (queue.inflight, queue.waiting) == (1, 0)
        stuck.set()
        await running

    asyncio.run(go())


def test_requests_are_judged_by_the_average_hold_plus_twice_its_deviation() -> None:
    clock = Clock()
    queue = AdmissionQueue(1, 8, clock=clock)

    async def go() -> None:
        await hold(queue, clock, 10.0)
        assert (queue.hold_s, queue.hold_dev_s, queue.hold_budget_s) == (10.0, 5.0, 20.0)
        await hold(queue, clock, 30.0)  # dev 0.75*5 + 0.25*20 = 8.75; hold 0.8*10 + 0.2*30 = 14
        assert (queue.hold_s, queue.hold_dev_s) == (14.0, 8.75) and queue.hold_budget_s == 31.5

    asyncio.run(go())


def test_a_large_document_holds_slots_by_its_size() -> None:
    from service.queue import request_cost

    assert [request_cost(n) for n in (20, 399, 400, 3200)] == [1, 1, 2, 9]
    queue = AdmissionQueue(4, 8)
    order: list[str] = []

    async def go() -> None:
        gates = {n: asyncio.Event() for n in "abc"}

        async def job(name: str, cost: int) -> None:
            async with queue.slot(cost=cost):
                order.append(name)
                await gates[name].wait()

        small = asyncio.create_task(job("a", 1))
        await asyncio.sleep(0)
        large = asyncio.create_task(job("b", 9))  # more than all four slots: it takes the whole engine
        await asyncio.sleep(0)
        after = asyncio.create_task(job("c", 1))  # first come, first served: behind the large one
        await asyncio.sleep(0)
        assert (order, queue.inflight, queue.waiting) == (["a"], 1, 2)
        gates["a"].set()
        await small
        await asyncio.sleep(0)
        assert (order, queue.inflight) == (["a", "b"], 4)
        gates["b"].set()
        await large
        await asyncio.sleep(0)
        assert (order, queue.inflight) == (["a", "b", "c"], 1)
        gates["c"].set()
        await after

    asyncio.run(go())
    assert (queue.inflight, queue.waiting) == (0, 0)


def test_a_large_document_that_would_wait_is_refused_by_its_own_expected_hold() -> None:
    import pytest

    from extractor.errors import QueueFull

    queue = AdmissionQueue(2, 8)
    queue.hold_s, queue.hold_dev_s = 30.0, 0.0  # requests hold their slot 30 s

    async def go() -> int:
        gate = asyncio.Event()

        async def busy(cost: int = 1) -> None:
            async with queue.slot(60.0, cost):
                await gate.wait()

        running = [asyncio.create_task(busy()) for _ in range(2)]
        await asyncio.sleep(0)
        # 15 s of expected wait plus twice 30 s in its slots passes its 60 s deadline: refused at once
        with pytest.raises(QueueFull, match="up to 60 s to extract"):
            async with queue.slot(60.0, cost=2):
                pass
        small = asyncio.create_task(busy())  # 15 s plus 30 s fits: it waits
        await asyncio.sleep(0)
        waiting = queue.waiting
        gate.set()
        await asyncio.gather(*running, small)
        return waiting

    assert asyncio.run(go()) == 1


def test_a_large_waiter_leaving_the_head_lets_the_small_ones_behind_it_in() -> None:
    queue = AdmissionQueue(4, 8)

    async def go() -> tuple[int, int]:
        gate = asyncio.Event()

        async def job(cost: int) -> None:
            async with queue.slot(cost=cost):
                await gate.wait()

        running = asyncio.create_task(job(1))
        await asyncio.sleep(0)
        large = asyncio.create_task(job(4))  # waits for all four
        small = asyncio.create_task(job(1))  # behind it, though three slots are free
        await asyncio.sleep(0)
        assert (queue.inflight, queue.waiting) == (1, 2)
        large.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen = (queue.inflight, queue.waiting)
        gate.set()
        await asyncio.gather(running, small)
        return seen

    assert asyncio.run(go()) == (2, 0)
