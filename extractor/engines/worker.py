"""What the engines that decode in a worker thread share: the job a caller's event loop hands
to the worker, and settling its future back on that loop from the worker thread."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

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
