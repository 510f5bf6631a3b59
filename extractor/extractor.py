"""`Extractor`: the in-process SDK entry point."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Iterable, Iterator, Sequence
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel

from .batch import Document, ItemResult, extract_many, iterate_in_thread
from .contract import Task
from .engines import Engine, create_engine
from .errors import ExtractorError
from .registry import SchemaRegistry, default_registry
from .result import Extraction
from .retry import RetryPolicy, extract_one

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


def _run(coro: Coroutine[Any, Any, R]) -> R:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    raise RuntimeError("called a sync Extractor method inside an event loop; use the `a...` method and await it")


class Extractor:
    """Extract typed records from documents.

    >>> Extractor().extract(Person, "Alice Smith, 34, lives in Lisbon.")
    Person(name='Alice Smith', age=34, city='Lisbon', email=None)

    `engine` is an engine name (`"local"` by default) or any object that
    implements the `Engine` protocol. `spans=True` puts where each value occurs in the
    document in `meta.spans`; `confidence=True` puts per-field probabilities from the
    engine's token logprobs in `meta.confidence`; `require_grounded=True` rejects (and
    retries) free-text values that occur nowhere in the document; `grounded_decoding=True`
    lets the grammar write only strings and numbers that occur in the document (see
    `document_constraint`), `False` never, and `None` (the default) as the schema says
    (`Contract.grounded_decoding`: on for the shipped invoice, receipt and job_posting).
    `run`/`arun` take the same four per call.
    """

    def __init__(self, engine: str | Engine = "local", *, max_retries: int = 2,
                 registry: SchemaRegistry | None = None, logprobs: bool = False, spans: bool = False,
                 confidence: bool = False, require_grounded: bool = False, grounded_decoding: bool | None = None,
                 **engine_options: Any) -> None:
        self.engine: Engine = create_engine(engine, **engine_options) if isinstance(engine, str) else engine
        self.registry = registry if registry is not None else default_registry()
        self.policy = RetryPolicy(max_attempts=max_retries + 1, logprobs=logprobs, spans=spans, confidence=confidence,
                                  require_grounded=require_grounded, grounded_decoding=grounded_decoding)

    def task(self, schema: str | type[BaseModel] | Task[Any]) -> Task[Any]:
        return self.registry.resolve(schema)

    def _policy(self, spans: bool | None, confidence: bool | None, require_grounded: bool | None,
                grounded_decoding: bool | None = None) -> RetryPolicy:
        changes = {k: v for k, v in (("spans", spans), ("confidence", confidence), ("require_grounded", require_grounded),
                                     ("grounded_decoding", grounded_decoding)) if v is not None}
        return dataclasses.replace(self.policy, **changes) if changes else self.policy

    async def arun(self, schema: str | type[BaseModel] | Task[Any], text: str, *, spans: bool | None = None,
                   confidence: bool | None = None, require_grounded: bool | None = None,
                   grounded_decoding: bool | None = None) -> Extraction[Any]:
        """Extract with metadata: an `Extraction` (data + meta). The keywords override the
        extractor's own settings for this call."""
        policy = self._policy(spans, confidence, require_grounded, grounded_decoding)
        return await extract_one(self.engine, self.task(schema), text, policy)

    def run(self, schema: str | type[BaseModel] | Task[Any], text: str, *, spans: bool | None = None,
            confidence: bool | None = None, require_grounded: bool | None = None,
            grounded_decoding: bool | None = None) -> Extraction[Any]:
        return _run(self.arun(schema, text, spans=spans, confidence=confidence, require_grounded=require_grounded,
                              grounded_decoding=grounded_decoding))

    @overload
    async def aextract(self, schema: type[M], text: str) -> M: ...
    @overload
    async def aextract(self, schema: str | Task[Any], text: str) -> Any: ...
    async def aextract(self, schema: Any, text: str) -> Any:
        """Extract and return only the validated value (a model instance for a model)."""
        return (await self.arun(schema, text)).data

    @overload
    def extract(self, schema: type[M], text: str) -> M: ...
    @overload
    def extract(self, schema: str | Task[Any], text: str) -> Any: ...
    def extract(self, schema: Any, text: str) -> Any:
        return _run(self.aextract(schema, text))

    @overload
    async def aextract_many(self, schema: type[M], texts: Sequence[str], *,
                            return_exceptions: Literal[False] = False) -> list[M]: ...
    @overload
    async def aextract_many(self, schema: type[M], texts: Sequence[str], *,
                            return_exceptions: Literal[True]) -> list[M | ExtractorError]: ...
    @overload
    async def aextract_many(self, schema: str | Task[Any], texts: Sequence[str], *,
                            return_exceptions: bool = False) -> list[Any]: ...
    async def aextract_many(self, schema: Any, texts: Sequence[str], *, return_exceptions: bool = False) -> list[Any]:
        """One value per text, in order; all run concurrently (the engine batches them).

        With `return_exceptions`, a failed document gives its `ExtractorError` in its place
        instead of raising the first one.
        """
        task = self.task(schema)

        async def one(text: str) -> Any:
            try:
                return await self.aextract(task, text)
            except ExtractorError as exc:
                if return_exceptions:
                    return exc
                raise

        return list(await asyncio.gather(*(one(t) for t in texts)))

    @overload
    def extract_many(self, schema: type[M], texts: Sequence[str], *,
                     return_exceptions: Literal[False] = False) -> list[M]: ...
    @overload
    def extract_many(self, schema: type[M], texts: Sequence[str], *,
                     return_exceptions: Literal[True]) -> list[M | ExtractorError]: ...
    @overload
    def extract_many(self, schema: str | Task[Any], texts: Sequence[str], *,
                     return_exceptions: bool = False) -> list[Any]: ...
    def extract_many(self, schema: Any, texts: Sequence[str], *, return_exceptions: bool = False) -> list[Any]:
        return _run(self.aextract_many(schema, texts, return_exceptions=return_exceptions))

    async def aiter_many(self, schema: str | type[BaseModel] | Task[Any],
                         docs: Iterable[str | Document | tuple[str, str]] | AsyncIterable[Any], *,
                         concurrency: int = 64, ordered: bool = True, progress: bool = False,
                         total: int | None = None) -> AsyncIterator[ItemResult]:
        """Stream `ItemResult`s for many documents (strings, `(id, text)` pairs or `Document`s):
        at most `concurrency` in flight, in input order or (`ordered=False`) as completed.
        A bad document is an item with an `error`; an engine failure raises `EngineError`."""
        task = self.task(schema)
        bar = None
        if progress:
            import sys

            from tqdm import tqdm

            if total is None and isinstance(docs, Sequence):
                total = len(docs)
            bar = tqdm(total=total, unit="doc", file=sys.stderr)

        async def run(text: str) -> Extraction[Any]:
            return await extract_one(self.engine, task, text, self.policy)

        try:
            async for item in extract_many(run, docs, concurrency=concurrency, ordered=ordered):
                if bar is not None:
                    bar.update(1)
                yield item
        finally:
            if bar is not None:
                bar.close()

    def iter_many(self, schema: str | type[BaseModel] | Task[Any], docs: Iterable[str | Document | tuple[str, str]], *,
                  concurrency: int = 64, ordered: bool = True, progress: bool = False) -> Iterator[ItemResult]:
        """`aiter_many` for sync code: results stream in as they are ready (the batch runs in
        a private event loop thread), so millions of documents need no list in memory."""
        total = len(docs) if isinstance(docs, Sequence) else None
        return iterate_in_thread(lambda: self.aiter_many(schema, docs, concurrency=concurrency, ordered=ordered,
                                                         progress=progress, total=total))
