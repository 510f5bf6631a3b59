"""Many documents through one extractor: bounded concurrency, per-item errors as values.

`run_many` is an async iterator over `ItemResult`s; one bad document
never fails the batch (its `ExtractorError` is the item's `error`), while an
engine that is down fails it (an `EngineError` would fail every item alike).
Results come as completed, or in input order with `ordered=True`; at most
`concurrency` documents are in flight and no more than that are buffered, so
a generator of millions of documents runs in constant memory.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from extractor.errors import EngineError, ExtractorError
from extractor.pipeline.options import DEFAULT_CONCURRENCY
from extractor.pipeline.result import Extraction


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    #: set when the document could not be read: it becomes the item's error
    error: ExtractorError | None = None


@dataclass(frozen=True)
class ItemResult:
    """One document's outcome: `extraction` or `error`, never both."""

    id: str
    index: int
    extraction: Extraction[Any] | None = None
    error: ExtractorError | None = None

    @property
    def ok(self) -> bool:
        return self.extraction is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSONL line of `extract batch`: `id` and `data` + `meta`, or `error`."""
        if self.extraction is not None:
            out = self.extraction.to_dict()
            return {"id": self.id, "data": out["data"], "meta": {"schema": out["schema"], "version": out["version"],
                                                                  **out["meta"]}}
        assert self.error is not None
        return {"id": self.id, "error": {"type": self.error.code, "message": str(self.error),
                                          **({"errors": self.error.details["errors"]} if "errors" in self.error.details else {})}}


def as_documents(docs: Iterable[str | Document | tuple[str, str]]) -> Iterator[Document]:
    """Plain strings get their position as id."""
    for i, d in enumerate(docs):
        if isinstance(d, Document):
            yield d
        elif isinstance(d, tuple):
            yield Document(str(d[0]), d[1])
        else:
            yield Document(str(i), d)


async def _aiter(docs: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Document]:
    if isinstance(docs, AsyncIterable):
        i = 0
        async for d in docs:
            yield next(as_documents([d])) if not isinstance(d, str) else Document(str(i), d)
            i += 1
    else:
        for d in as_documents(docs):
            yield d


async def run_many(run: Any, docs: Iterable[Any] | AsyncIterable[Any], *, concurrency: int = DEFAULT_CONCURRENCY,
                       ordered: bool = False, pilot: bool = True) -> AsyncIterator[ItemResult]:
    """`run(text)` is an async function returning an `Extraction` (e.g. a bound `Extractor.arun`).

    With `pilot` (the default) the first document runs alone before the rest start: it warms what
    an engine builds once per task (the compiled grammar, the cached prompt head shared by every
    document, the validators), so the flood does not build them thousands of times at once, and an
    engine that is down fails the batch after one request rather than after a window of them."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    pending: set[asyncio.Task[ItemResult]] = set()
    done_buffer: dict[int, ItemResult] = {}
    next_out = 0

    async def one(index: int, doc: Document) -> ItemResult:
        if doc.error is not None:
            return ItemResult(doc.id, index, error=doc.error)
        try:
            return ItemResult(doc.id, index, extraction=await run(doc.text))
        except EngineError:
            raise
        except ExtractorError as exc:
            return ItemResult(doc.id, index, error=exc)

    def ready() -> Iterator[ItemResult]:
        nonlocal next_out
        if not ordered:
            yield from (done_buffer.pop(i) for i in sorted(done_buffer))
            return
        while next_out in done_buffer:
            yield done_buffer.pop(next_out)
            next_out += 1

    # Finished tasks report through a queue: O(1) a completion. (asyncio.wait over the pending
    # set re-registers a callback on every pending task each call: quadratic in the window.)
    finished: asyncio.Queue[asyncio.Task[ItemResult]] = asyncio.Queue()

    def track(task: asyncio.Task[ItemResult]) -> None:
        pending.add(task)
        task.add_done_callback(finished.put_nowait)

    async def drain() -> list[ItemResult]:
        if not pending:
            return []
        task = await finished.get()
        while True:
            pending.discard(task)
            item = task.result()  # an EngineError propagates: the whole batch stops
            done_buffer[item.index] = item
            try:
                task = finished.get_nowait()
            except asyncio.QueueEmpty:
                break
        return list(ready())

    try:
        index = 0
        async for doc in _aiter(docs):
            # in ordered mode, buffered results count against the window too
            while len(pending) + len(done_buffer) >= concurrency:
                for item in await drain():
                    yield item
                if len(pending) == 0:
                    break
            track(asyncio.ensure_future(one(index, doc)))
            index += 1
            if pilot and index == 1:
                while pending:
                    for item in await drain():
                        yield item
        while pending:
            for item in await drain():
                yield item
        for item in ready():
            yield item
    finally:
        for task in pending:
            task.cancel()


def iterate_in_thread(agen_factory: Any, buffer: int = 256) -> Iterator[Any]:
    """Drive an async iterator in a private event loop thread; yield its items here.

    Lets the sync SDK stream results from a batch without holding them all."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=buffer)
    stop = threading.Event()

    async def pump() -> None:
        try:
            async for item in agen_factory():
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        await asyncio.sleep(0)
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:
            q.put(("error", exc))

    thread = threading.Thread(target=lambda: asyncio.run(pump()), name="extract-many", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)
