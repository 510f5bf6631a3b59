"""`Extractor`: the in-process SDK entry point."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Self, TypeVar, overload

from pydantic import BaseModel

from extractor.adapters.registry import AdapterRegistry, AdapterSpec
from extractor.contracts.contract import Task
from extractor.contracts.registry import SchemaRegistry, default_registry
from extractor.engines import Engine, adapter_options, create_engine
from extractor.errors import ExtractorError
from extractor.longdoc import extract_document, stream_document
from extractor.pipeline.many import Document, ItemResult, iterate_in_thread, run_many
from extractor.pipeline.options import DEFAULT_CONCURRENCY, DEFAULT_OPTIONS, ExtractOptions, split_option_keywords
from extractor.pipeline.result import Extraction
from extractor.pipeline.sync import LoopThread

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


class Extractor:
    """Extract typed records from documents.

    >>> Extractor().extract(Person, "Alice Smith, 34, lives in Lisbon.")
    Person(name='Alice Smith', age=34, city='Lisbon', email=None)

    `engine` is an engine name (`"local"` by default) or any object that implements the
    `Engine` protocol. `options` (an `ExtractOptions`) sets this extractor's defaults; keywords
    named like its fields (`max_retries=1`, `spans=True`, `grounded_decoding=False`) do the same,
    and every other keyword is an engine option (`threads=1`, `base_url=...`). `run`/`arun` take
    per-call overrides the same way. An extractor that created its engine closes it: use it as a
    context manager (`with Extractor() as ex:` / `async with`) or call `close()`/`aclose()`.

    `adapter` is a LoRA adapter folder (`extract train`), several, or an `AdapterRegistry`: each
    schema with an adapter is extracted with it, the others with the base model. An adapter made
    for another schema version or base model is refused here (`AdapterRejected`), before any document.
    """

    def __init__(self, engine: str | Engine = "local", *, options: ExtractOptions | None = None,
                 registry: SchemaRegistry | None = None, adapter: AdapterSpec = None, **keywords: Any) -> None:
        option_keywords, engine_options = split_option_keywords(keywords)
        self.options = (options or DEFAULT_OPTIONS).merged(option_keywords)
        self.registry = registry if registry is not None else default_registry()
        #: the one event loop of this extractor's sync methods (see pipeline/sync.py)
        self._loop = LoopThread()
        self.adapters = AdapterRegistry.load(adapter)
        self.adapters.check(self.registry.get)  # the schemas, before a model is loaded
        self._owns_engine = isinstance(engine, str)
        if isinstance(engine, str):
            engine_options = {**adapter_options(engine, self.adapters.refs()), **engine_options}
            self.engine: Engine = create_engine(engine, **engine_options)
        else:
            self.engine = engine
        try:
            self.adapters.check(self.registry.get, getattr(self.engine, "base_config", None), self.engine.model)
        except Exception:
            self.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self._loop.run(coro)

    def task(self, schema: str | type[BaseModel] | Task[Any]) -> Task[Any]:
        return self.registry.resolve(schema)

    def options_for(self, options: ExtractOptions | Mapping[str, Any] | None = None, **overrides: Any) -> ExtractOptions:
        """This extractor's options with a call's overrides (an `ExtractOptions`, a mapping, or
        keywords named like its fields)."""
        return self.options.merged(options).merged(overrides)

    async def arun(self, schema: str | type[BaseModel] | Task[Any], text: str,
                   options: ExtractOptions | Mapping[str, Any] | None = None, **overrides: Any) -> Extraction[Any]:
        """Extract with metadata: an `Extraction` (data + meta). `options` and keywords named like
        `ExtractOptions` fields (`spans=True`) override the extractor's own for this call."""
        task = self.task(schema)
        return await extract_document(self.engine, task, text, self.options_for(options, **overrides), self.adapters.ref_for(task))

    async def astream(self, schema: str | type[BaseModel] | Task[Any], text: str,
                      options: ExtractOptions | Mapping[str, Any] | None = None,
                      **overrides: Any) -> AsyncIterator[dict[str, Any]]:
        """Events as values become final, each sent once and never changed: `item` (a list
        field's item of a long document, with `field`, `data`, `start`, `end`), `record` (with
        `many=True`), `field` (`field`, `value`), then `result` (`schema`, `version`, `data`,
        `meta`, as `Extraction.to_dict`). See `extractor.longdoc`."""
        task = self.task(schema)
        async for event in stream_document(self.engine, task, text, self.options_for(options, **overrides),
                                           self.adapters.ref_for(task)):
            yield event

    def run(self, schema: str | type[BaseModel] | Task[Any], text: str,
            options: ExtractOptions | Mapping[str, Any] | None = None, **overrides: Any) -> Extraction[Any]:
        return self._run(self.arun(schema, text, options, **overrides))

    async def aclose(self) -> None:
        """Close the engine if this extractor created it (an engine passed in is the caller's)."""
        if self._owns_engine:
            await self.engine.aclose()

    def close(self) -> None:
        try:
            self._run(self.aclose())
        finally:
            self._loop.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        return self._run(self.aextract(schema, text))

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

        runs = [asyncio.ensure_future(one(t)) for t in texts]
        try:
            return list(await asyncio.gather(*runs))
        finally:  # the first failure raised: the others stop (the engine drops their work)
            for run in runs:
                run.cancel()

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
        return self._run(self.aextract_many(schema, texts, return_exceptions=return_exceptions))

    async def aiter_many(self, schema: str | type[BaseModel] | Task[Any],
                         docs: Iterable[str | Document | tuple[str, str]] | AsyncIterable[Any], *,
                         concurrency: int = DEFAULT_CONCURRENCY, ordered: bool = True, progress: bool = False,
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

        adapter = self.adapters.ref_for(task)

        async def run(text: str) -> Extraction[Any]:
            return await extract_document(self.engine, task, text, self.options, adapter)

        try:
            async for item in run_many(run, docs, concurrency=concurrency, ordered=ordered):
                if bar is not None:
                    bar.update(1)
                yield item
        finally:
            if bar is not None:
                bar.close()

    def iter_many(self, schema: str | type[BaseModel] | Task[Any], docs: Iterable[str | Document | tuple[str, str]], *,
                  concurrency: int = DEFAULT_CONCURRENCY, ordered: bool = True, progress: bool = False) -> Iterator[ItemResult]:
        """`aiter_many` for sync code: results stream in as they are ready (the batch runs in
        a private event loop thread), so millions of documents need no list in memory."""
        total = len(docs) if isinstance(docs, Sequence) else None
        return iterate_in_thread(lambda: self.aiter_many(schema, docs, concurrency=concurrency, ordered=ordered,
                                                         progress=progress, total=total))
