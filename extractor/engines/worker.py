"""What the engines that decode in a worker thread share: the job a caller's event loop hands
to the worker, and settling its future back on that loop from the worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from extractor.engines.base import GenerationRequest, GenerationResult, OnText


@dataclass
class Job:
    request: GenerationRequest
    future: asyncio.Future[GenerationResult]
    loop: asyncio.AbstractEventLoop
    #: the caller's `TextStreaming` callback, for a job that streams its text
    on_text: OnText | None = None


def abandoned(job: Job) -> bool:
    """The caller gave up on the job (cancelled: a deadline, a client gone, a failed sibling) or
    its loop is gone: the worker drops it instead of spending the engine on it."""
    return job.future.done() or job.loop.is_closed()


def settle(job: Job, outcome: GenerationResult | BaseException) -> None:
    """Resolve the job's future on its own loop (thread-safe); a cancelled caller is left alone,
    and so is one whose loop has closed (the worker thread must never die of it)."""

    def resolve() -> None:
        if job.future.done():
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    try:
        job.loop.call_soon_threadsafe(resolve)
    except RuntimeError:  # "Event loop is closed": nobody is waiting any more
        pass


def notify(job: Job, text: str) -> None:
    """Hand `text`, the job's output so far, to its `on_text` on the job's own loop (thread-safe);
    nothing once the caller gave up."""
    if job.on_text is None or abandoned(job):
        return
    try:
        job.loop.call_soon_threadsafe(job.on_text, text)
    except RuntimeError:  # the loop closed meanwhile
        pass


J = TypeVar("J", bound="Job")


async def submit(put: Callable[[J], object], job_type: type[J], requests: Sequence[GenerationRequest],
                 on_text: OnText | None = None) -> list[GenerationResult]:
    """Hand each request to the worker (`put`) as a `job_type` on this loop, streaming its text to
    `on_text` if given, and wait for every result, in order."""
    loop = asyncio.get_running_loop()
    jobs = [job_type(r, loop.create_future(), loop, on_text) for r in requests]
    for job in jobs:
        put(job)
    return list(await asyncio.gather(*(j.future for j in jobs)))
