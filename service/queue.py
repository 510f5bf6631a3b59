"""Admission control: at most `max_inflight` requests extract at once, at most
`max_waiting` more wait (first come, first served); anything past that is
refused at once with `QueueFull` (429), never queued without bound.

The in-flight requests call the engine concurrently, and the engine batches
them (the local engine micro-batches concurrent `generate` calls; vLLM
schedules concurrent requests), so `max_inflight` is the batch the service
offers the engine.

A request that would have to wait is also refused at once when the queue could not
serve it within its deadline: the wait is estimated from how long slots are held
(a moving average of the last requests) and how many are ahead of it. Under
overload clients then get a 429 with a `Retry-After` of that estimate, not a 504
after the whole deadline spent in the queue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from extractor.errors import QueueFull


class AdmissionQueue:
    def __init__(self, max_inflight: int, max_waiting: int, *, retry_after_s: int = 1,
                 on_change: Callable[[int, int], None] | None = None) -> None:
        self.max_inflight = max_inflight
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_change = on_change
        #: moving average of how long a request holds its slot (None until one has finished)
        self.hold_s: float | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.inflight, self.waiting)

    def expected_wait_s(self, position: int) -> float | None:
        """About how long the request at `position` in the queue (0: next) waits for a slot."""
        if self.hold_s is None:
            return None
        return (position + 1) * self.hold_s / self.max_inflight

    @asynccontextmanager
    async def slot(self, deadline_s: float | None = None) -> AsyncIterator[None]:
        """Hold one in-flight slot for the body of the `async with`.

        With `deadline_s`, a request that would wait is refused (`QueueFull`) when the
        expected wait plus the expected time in its slot exceeds it. Cancellation (a
        deadline) while waiting gives the place up; while running, the slot is released
        as the body unwinds.
        """
        await self._acquire(deadline_s)
        held = time.monotonic()
        try:
            yield
        finally:
            self._observe(time.monotonic() - held)
            self._release()

    def _observe(self, seconds: float) -> None:
        self.hold_s = seconds if self.hold_s is None else 0.8 * self.hold_s + 0.2 * seconds

    async def _acquire(self, deadline_s: float | None = None) -> None:
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            self._changed()
            return
        if len(self._waiters) >= self.max_waiting:
            raise QueueFull(f"the service is at capacity ({self.max_inflight} in flight, {self.max_waiting} waiting); "
                            "retry later", retry_after=self.retry_after_s)
        wait = self.expected_wait_s(len(self._waiters))
        if deadline_s is not None and wait is not None and self.hold_s is not None and wait + self.hold_s > deadline_s:
            raise QueueFull(f"the service is busy: about {wait:.0f} s in the queue plus {self.hold_s:.0f} s to extract "
                            f"would pass this request's {deadline_s:g} s deadline; retry later",
                            retry_after=max(self.retry_after_s, math.ceil(wait)))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._changed()
        try:
            await waiter  # _release hands its slot over: inflight already counts us
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            elif waiter in self._waiters:  # _release may already have skipped it
                self._waiters.remove(waiter)
                self._changed()
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter; inflight unchanged
                self._changed()
                return
        self.inflight -= 1
        self._changed()
