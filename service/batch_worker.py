"""The batch worker: started with the app's lifespan, it leases items from the
store and runs them through the service's own pipeline (the same engine,
admission queue, deadline and metrics as `POST /extract`), by `extract_many`.

Each finished item's line (`ItemResult.to_dict()`: `{"id", "data", "meta"}`
or `{"id", "error"}`) is written as it comes, in the UPDATE that marks it done.
An engine failure (`EngineError`: down, overloaded, past the deadline) gives
the unfinished items back as pending and the worker backs off; they are run
again later. Which item failed is kept: when the engine still answers its
readiness probe after a round, the failures were the items' own (a document
that makes the server fail or time out every time), and each counts against
its item; at `max_engine_errors` the item fails alone with that engine error
as its result line, instead of coming back forever. A refusal of the admission
queue (429), a deadline spent in the queue and a probe that fails (an outage)
count against no item. While it works, the worker renews its
leases; a worker that dies stops renewing, and once its leases expire any
worker (this process restarted, or another one) claims the items again.
A graceful stop gives its leases back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from itertools import groupby
from typing import Any

from extractor.contracts.contract import Task
from extractor.errors import DeadlineExceeded, EngineError, EngineOverloaded, EngineUnavailable, ExtractorError
from extractor.pipeline.many import ItemResult
from service.batch_store import BatchStore, Claimed
from service.models import RequestOptions
from service.pipeline import Pipeline

log = logging.getLogger("extractor.service")


class BatchWorker:
    def __init__(self, store: BatchStore, pipeline: Pipeline, lookup: Callable[[str], Task[Any]], *,
                 claim: int = 16, lease_s: float = 60.0, poll_s: float = 1.0, max_backoff_s: float = 30.0,
                 max_engine_errors: int = 5) -> None:
        self.store = store
        self.pipeline = pipeline
        self.lookup = lookup
        self.claim = claim
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.max_engine_errors = max_engine_errors
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batch-worker")

    def wake(self) -> None:
        """A job was created: look for work now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop, and give back the items this worker holds so that another takes them at once."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self.store.exists():
            try:
                released = await asyncio.to_thread(self.store.release, self.owner)
            except Exception as exc:  # the database is down: the leases expire on their own
                log.warning("batch worker %s could not release its leases: %s", self.owner, exc)
            else:
                if released:
                    log.info("batch worker %s gave back %d item(s)", self.owner, released)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    def _backoff(self) -> float:
        self._failures += 1
        return float(min(self.poll_s * 2 ** min(self._failures, 16), self.max_backoff_s))

    async def _loop(self) -> None:
        while True:
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except EngineError as exc:
                delay = self._backoff()
                log.warning("batch worker: engine failure (%s); items stay pending, next try in %.1f s", exc, delay)
                await self._sleep(delay)
                continue
            except Exception:
                delay = self._backoff()
                log.exception("batch worker: unexpected failure; next try in %.1f s", delay)
                await self._sleep(delay)
                continue
            self._failures = 0
            if not worked:
                await self._sleep(self.poll_s)

    async def run_once(self) -> bool:
        """Claim one round of items and run them; False when there was nothing to do (or no engine yet)."""
        if not await asyncio.to_thread(self.store.open, create=False):
            return False  # no database yet: the first job creates it, and wakes us
        try:
            self.pipeline.engines.get()
        except EngineUnavailable:
            return False  # still loading: claim nothing we could not run
        items = await asyncio.to_thread(self.store.claim, self.owner, self.claim, self.lease_s)
        if not items:
            return False
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat())
        pending = {(c.job_id, c.seq) for c in items}
        failures: dict[tuple[str, int], tuple[str, EngineError]] = {}
        try:
            async with asyncio.TaskGroup() as group:
                for _, job_items in groupby(items, key=lambda c: c.job_id):
                    group.create_task(self._run_job_items(list(job_items), pending, failures))
            if failures:
                await self._count_engine_failures(failures, pending)
        except BaseExceptionGroup as eg:
            engine_errors, rest = eg.split(EngineError)
            if rest is not None:
                raise rest from None
            assert engine_errors is not None
            raise engine_errors.exceptions[0] from None
        finally:
            heartbeat.cancel()
            if pending:  # stopped by an engine failure or a cancellation: back to pending at once
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.to_thread(self.store.release, self.owner, list(pending)))
        return True

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await asyncio.to_thread(self.store.renew, self.owner, self.lease_s)
            except Exception as exc:
                log.warning("batch worker %s could not renew its leases: %s", self.owner, exc)

    async def _run_job_items(self, items: list[Claimed], pending: set[tuple[str, int]],
                             failures: dict[tuple[str, int], tuple[str, EngineError]]) -> None:
        first = items[0]
        try:
            task = self.lookup(first.schema)
            options = RequestOptions.model_validate(first.options)
        except ExtractorError as exc:  # e.g. a schema module no longer loaded: each item fails with it
            for c in items:
                await self._finish(c.job_id, c.seq, ItemResult(c.item_id, c.seq, error=exc), pending)
            return

        async def one(c: Claimed) -> None:
            try:
                result = ItemResult(c.item_id, c.seq, extraction=(await self.pipeline.extract(task, c.text, options))
                                    .extraction)
            except EngineError as exc:  # the item stays pending; its siblings go on (see _count_engine_failures)
                failures[(c.job_id, c.seq)] = (c.item_id, exc)
                return
            except ExtractorError as exc:
                result = ItemResult(c.item_id, c.seq, error=exc)
            await self._finish(c.job_id, c.seq, result, pending)

        await asyncio.gather(*(one(c) for c in items))

    async def _count_engine_failures(self, failures: dict[tuple[str, int], tuple[str, EngineError]],
                                     pending: set[tuple[str, int]]) -> None:
        """After a round with engine failures: if the engine answers its probe, or is only too busy
        to answer it in time, each failure that can be the item's own counts against it (back to
        pending, or failed at the cap). Any other failure is raised: its items go back to pending
        uncounted and the worker backs off."""
        own = {key: failure for key, failure in failures.items() if _item_specific(failure[1])}
        if own:
            try:
                await self.pipeline.engines.probe()
            except ExtractorError as down:
                # a probe that timed out meets an engine that is busy (on these very items, maybe: one
                # hostile document can hold it for minutes), not one that is down: the failures count
                if not down.details.get("busy"):
                    log.warning("batch worker: engine down (%s); %d item(s) stay pending, uncounted", down,
                                len(failures))
                    own = {}
        for (job_id, seq), (item_id, exc) in own.items():
            capped = type(exc)(f"the engine failed on this item {self.max_engine_errors} times, while it answered "
                               f"others; last: {exc}")
            line = json.dumps({"id": item_id,
                               "error": {"type": capped.code, "message": str(capped)}},
                              ensure_ascii=True, separators=(",", ":"))
            failed = await asyncio.to_thread(self.store.engine_failure, self.owner, job_id, seq,
                                             max_errors=self.max_engine_errors, line=line)
            pending.discard((job_id, seq))
            if failed:
                log.warning("batch worker: item %s of %s failed after %d engine errors: %s",
                            item_id, job_id, self.max_engine_errors, exc)
        for key, (_, exc) in failures.items():
            if key not in own:
                raise exc

    async def _finish(self, job_id: str, seq: int, result: ItemResult, pending: set[tuple[str, int]]) -> None:
        line = json.dumps(result.to_dict(), ensure_ascii=True, separators=(",", ":"))
        kept = await asyncio.to_thread(self.store.finish, self.owner, job_id, seq, ok=result.ok, line=line)
        pending.discard((job_id, seq))
        if not kept:
            log.info("batch worker: result of item %s of %s dropped (lease lost or job cancelled)", result.id, job_id)


def _item_specific(exc: EngineError) -> bool:
    """Whether an engine failure may be the item's own doing: not a full admission queue (429), not
    a server that could not be reached at all, nor a deadline that ran out before the item reached
    the engine."""
    if isinstance(exc, EngineOverloaded) or exc.details.get("unreachable"):
        return False
    return not (isinstance(exc, DeadlineExceeded) and exc.details.get("engine_calls") == 0)
