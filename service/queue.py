"""Admission control: at most `max_inflight` requests extract at once, at most
`max_waiting` more wait (first come, first served); anything past that is
refused at once with `QueueFull` (429), never queued without bound.

The in-flight requests call the engine concurrently, and the engine batches
them (the local engine micro-batches concurrent `generate` calls; vLLM
schedules concurrent requests), so `max_inflight` is the batch the service
offers the engine.
"""

from __future__ import annotations

import asyncio
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

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.inflight, self.waiting)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one in-flight slot for the body of the `async with`.

        Cancellation (a deadline) while waiting gives the place up; while
        running, the slot is released as the body unwinds.
        """
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            self._changed()
            return
        if len(self._waiters) >= self.max_waiting:
            raise QueueFull(f"the service is at capacity ({self.max_inflight} in flight, {self.max_waiting} waiting); "
                            "retry later", retry_after=self.retry_after_s)
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
