"""The batch worker: started with the app's lifespan, it leases items from the
store and runs them through the service's own pipeline (the same engine,
admission queue, deadline and metrics as `POST /extract`), by `extract_many`.

Each finished item's line (`ItemResult.to_dict()`: `{"id", "data", "meta"}`
or `{"id", "error"}`) is written as it comes, in the UPDATE that marks it done.
An engine failure (`EngineError`: down, overloaded, past the deadline) gives
the unfinished items back as pending and the worker backs off; they are run
again later, never marked failed. While it works, the worker renews its
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

from extractor.batch import Document, ItemResult, extract_many
from extractor.contract import Task
from extractor.errors import EngineError, EngineUnavailable, ExtractorError
from extractor.result import Extraction

from .batch_store import BatchStore, Claimed
from .models import ExtractOptions
from .pipeline import Pipeline

log = logging.getLogger("extractor.service")


class BatchWorker:
    def __init__(self, store: BatchStore, pipeline: Pipeline, lookup: Callable[[str], Task[Any]], *,
                 claim: int = 16, lease_s: float = 60.0, poll_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        self.store = store
        self.pipeline = pipeline
        self.lookup = lookup
        self.claim = claim
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
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
        try:
            async with asyncio.TaskGroup() as group:
                for _, job_items in groupby(items, key=lambda c: c.job_id):
                    group.create_task(self._run_job_items(list(job_items), pending))
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

    async def _run_job_items(self, items: list[Claimed], pending: set[tuple[str, int]]) -> None:
        first = items[0]
        seq_of = {c.item_id: c.seq for c in items}
        try:
            task = self.lookup(first.schema)
            options = ExtractOptions.model_validate(first.options)
        except ExtractorError as exc:  # e.g. a schema module no longer loaded: each item fails with it
            for c in items:
                await self._finish(c.job_id, c.seq, ItemResult(c.item_id, c.seq, error=exc), pending)
            return

        async def run(text: str) -> Extraction[Any]:
            return (await self.pipeline.extract(task, text, options)).extraction

        docs = [Document(c.item_id, c.text) for c in items]
        async for result in extract_many(run, docs, concurrency=len(docs)):
            await self._finish(first.job_id, seq_of[result.id], result, pending)

    async def _finish(self, job_id: str, seq: int, result: ItemResult, pending: set[tuple[str, int]]) -> None:
        line = json.dumps(result.to_dict(), ensure_ascii=True, separators=(",", ":"))
        kept = await asyncio.to_thread(self.store.finish, self.owner, job_id, seq, ok=result.ok, line=line)
        pending.discard((job_id, seq))
        if not kept:
            log.info("batch worker: result of item %s of %s dropped (lease lost or job cancelled)", result.id, job_id)
