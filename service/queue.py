"""Admission control: at most `max_inflight` requests extract at once, at most
`max_waiting` more wait (first come, first served); anything past that is
refused at once with `QueueFull` (429), never queued without bound.

The in-flight requests call the engine concurrently, and the engine batches
them (the local engine micro-batches concurrent `generate` calls; vLLM
schedules concurrent requests), so `max_inflight` is the batch the service
offers the engine.

A request holds one slot, or more for a large document (`request_cost`: 1 + tokens/400, at most
the slots open), and waits first come first served for as many.

A request that would have to wait is also refused at once when the queue could not
serve it within its deadline (its wait plus its slots' count of expected holds): the wait is
estimated from how long slots are held
(a moving average of the last requests) and how many are ahead of it. Under
overload clients then get a 429 with a `Retry-After` of that estimate, not a 504
after the whole deadline spent in the queue. A request already waiting is refused
the same way as soon as the estimate says it can no longer start in time (slots
closed, holds grew, or it waited until the last moment an extraction of the usual
length could start). "The usual length" is the average hold plus twice its mean
deviation (`hold_budget_s`): holds vary (retries, longer documents, a batch slowed by
others), and a request admitted on the average alone ran past its deadline.

With `target_hold_s` (the service: a third of its deadline) the slots open adapt
(`limit`, between 1 and `max_inflight`), additive increase, multiplicative decrease:
each request that held its slot longer than the target closes a quarter of them (at
most once per quarter target), each one within it opens 1/limit more. An engine whose
time per request grows with the requests it runs at once (the local engine on a CPU:
its batch shares the cores) is then never given so many that an admitted request
cannot finish within its deadline: at five times its capacity with hostile documents
holding slots to their deadline, 16 slots gave 79 good requests a 504 in two minutes
and the engine's good throughput fell from 0.53 to 0.15 documents a second, the work
of requests that timed out thrown away (bench/hostile_load.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from extractor.errors import QueueFull

#: document tokens that take one slot more: a short document holds one slot, the 400-amount
#: invoice (about 3,200 tokens, 13 s of prefill for the local engine on this 2-core box against
#: 1.4 s for a person record) nine
COST_TOKENS = 400


def request_cost(document_tokens: int) -> int:
    """The slots a request holds (`AdmissionQueue.slot`): 1, plus one per `COST_TOKENS` tokens of its
    document. The engine's time per request grows with its prompt (prefill) and the batch it
    shares; a large document admitted like a small one held every request batched with it past
    its deadline (bench/hostile_load.py: 6 good requests of 3,537 answered 504, and 2 of its own)."""
    return 1 + max(0, document_tokens) // COST_TOKENS


class AdmissionQueue:
    def __init__(self, max_inflight: int, max_waiting: int, *, retry_after_s: int = 1,
                 on_change: Callable[[int, int, int], None] | None = None, target_hold_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_inflight = max_inflight
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self._waiters: deque[_Waiter] = deque()
        self._on_change = on_change
        #: moving average of how long a request holds its slot (None until one has finished), and of
        #: how far one hold is from it
        self.hold_s: float | None = None
        self.hold_dev_s = 0.0
        #: with a target, the slots open adapt to keep each request's hold within it (see the module doc)
        self.target_hold_s = target_hold_s
        self.limit = float(max_inflight)
        self._clock = clock
        self._last_cut = -math.inf
        self._changed()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def slots(self) -> int:
        """The slots open now: `max_inflight`, or fewer while requests hold theirs past the target."""
        return max(1, min(self.max_inflight, int(self.limit)))

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.inflight, self.waiting, self.slots)

    def expected_wait_s(self, position: int) -> float | None:
        """About how long the request at `position` in the queue (0: next) waits for a slot."""
        if self.hold_s is None:
            return None
        return (position + 1) * self.hold_s / self.slots

    @asynccontextmanager
    async def slot(self, deadline_s: float | None = None, cost: int = 1) -> AsyncIterator[None]:
        """Hold `cost` in-flight slots (one for a document of the usual size, more for a large one:
        `request_cost`; at most the slots open) for the body of the `async with`.

        With `deadline_s`, a request that would wait is refused (`QueueFull`) when the
        expected wait plus the expected time in its slot exceeds it. Cancellation (a
        deadline) while waiting gives the place up; while running, the slot is released
        as the body unwinds.
        """
        taken = await self._acquire(deadline_s, max(1, min(cost, self.slots)))
        held = self._clock()
        try:
            yield
        finally:
            self._observe(self._clock() - held)
            self._release(taken)

    @property
    def hold_budget_s(self) -> float | None:
        """The time in its slot a request is judged by: the average hold plus twice its mean
        deviation (as TCP's retransmission timeout), so a request admitted to wait has time for a
        longer extraction than the average (a retry, a longer document, a batch slowed by others)."""
        return None if self.hold_s is None else self.hold_s + 2 * self.hold_dev_s

    def _observe(self, seconds: float) -> None:
        if self.hold_s is None:
            self.hold_s, self.hold_dev_s = seconds, seconds / 2
        else:
            self.hold_dev_s = 0.75 * self.hold_dev_s + 0.25 * abs(seconds - self.hold_s)
            self.hold_s = 0.8 * self.hold_s + 0.2 * seconds
        target = self.target_hold_s
        if target is None:
            return
        if seconds <= target:
            self.limit = min(float(self.max_inflight), self.limit + 1 / self.limit)
        elif (now := self._clock()) - self._last_cut >= target / 4:
            # one cut per quarter target: a whole batch finishing late together is one signal, not many
            self.limit, self._last_cut = max(1.0, self.limit * 0.75), now

    async def _acquire(self, deadline_s: float | None = None, cost: int = 1) -> int:
        """Take `cost` slots (fewer where the slots open shrank meanwhile); returns how many."""
        if self.inflight + cost <= self.slots and not self._waiters:
            self.inflight += cost
            self._changed()
            return cost
        if len(self._waiters) >= self.max_waiting:
            raise QueueFull(f"the service is at capacity ({self.max_inflight} in flight, {self.max_waiting} waiting); "
                            "retry later", retry_after=self.retry_after_s)
        wait = self.expected_wait_s(len(self._waiters))
        hold = self.hold_budget_s
        if deadline_s is not None and wait is not None and hold is not None and wait + hold * cost > deadline_s:
            raise self._busy(wait, deadline_s, cost)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline_at = self._clock() + deadline_s if deadline_s is not None else None
        entry = _Waiter(waiter, deadline_at, deadline_s, cost)
        self._waiters.append(entry)
        self._changed()
        try:
            while not waiter.done():
                # wake at the last moment an extraction of the usual length could still start in time
                hold = self.hold_budget_s
                timeout = (None if deadline_at is None or hold is None
                           else max(0.05, deadline_at - hold * entry.cost - self._clock()))
                done, _ = await asyncio.wait({waiter}, timeout=timeout)
                if not done:
                    self._shed()
            waiter.result()  # _release hands its slots over (inflight already counts them), or _shed refused us
            return entry.cost
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(entry.cost)  # the slots were handed over just as we were cancelled
            else:
                self._forget(waiter)
            raise

    def _busy(self, wait: float, deadline_s: float, cost: int = 1) -> QueueFull:
        assert self.hold_budget_s is not None
        return QueueFull(f"the service is busy: about {wait:.0f} s in the queue plus up to "
                         f"{self.hold_budget_s * cost:.0f} s to extract "
                         f"would pass this request's {deadline_s:g} s deadline; retry later",
                         retry_after=max(self.retry_after_s, math.ceil(wait)))

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        for entry in self._waiters:
            if entry.future is waiter:
                self._waiters.remove(entry)
                self._dispatch()  # a large waiter gone from the head: the small ones behind it may fit
                self._changed()
                return

    def _shed(self) -> None:
        """Refuse (429) each waiter that can no longer start in time to finish within its deadline,
        as the estimate now stands (slots closed, holds grown, or time passed): a 429 now rather
        than a 504 at its deadline."""
        hold = self.hold_budget_s
        if hold is None:
            return
        now = self._clock()
        kept: deque[_Waiter] = deque()
        for entry in self._waiters:
            wait = self.expected_wait_s(len(kept))
            assert wait is not None
            if (entry.deadline_at is not None and entry.deadline_s is not None and not entry.future.done()
                    and now + wait + hold * entry.cost > entry.deadline_at):
                entry.future.set_exception(self._busy(wait, entry.deadline_s, entry.cost))
                entry.future.exception()  # retrieved: the waiter reads it, or is gone already
            else:
                kept.append(entry)
        if len(kept) != len(self._waiters):
            self._waiters = kept
            self._dispatch()
            self._changed()

    def _release(self, cost: int = 1) -> None:
        """Free `cost` slots; hand the slots open (fewer, or more, after `_observe`) to the waiters in
        order (a large one first in line waits for enough of them: first come, first served), then
        refuse those that can no longer make their deadline."""
        self.inflight -= cost
        self._dispatch()
        self._shed()
        self._changed()

    def _dispatch(self) -> None:
        """Hand the slots open to the waiters in order, while the first in line fits."""
        while self._waiters and (self._waiters[0].future.done()
                                 or self.inflight + min(self._waiters[0].cost, self.slots) <= self.slots):
            entry = self._waiters.popleft()
            if not entry.future.done():
                entry.cost = min(entry.cost, self.slots)
                entry.future.set_result(None)  # the slots pass to the waiter: inflight counts them now
                self.inflight += entry.cost


@dataclass
class _Waiter:
    future: asyncio.Future[None]
    #: the clock's time by which the request must be done, and its deadline as given
    deadline_at: float | None
    deadline_s: float | None
    #: the slots it takes (`request_cost`)
    cost: int = 1
