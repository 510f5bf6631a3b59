"""What the engines that decode in a worker thread share: the job a caller's event loop hands
to the worker, and settling its future back on that loop from the worker thread."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from extractor.engines.base import GenerationRequest, GenerationResult


@dataclass
class Job:
    request: GenerationRequest
    future: asyncio.Future[GenerationResult]
    loop: asyncio.AbstractEventLoop


def settle(job: Job, outcome: GenerationResult | BaseException) -> None:
    """Resolve the job's future on its own loop (thread-safe); a cancelled caller is left alone."""

    def resolve() -> None:
        if job.future.done():
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    job.loop.call_soon_threadsafe(resolve)
