"""One extraction request's way through the service: admission (bounded
queue), the deadline (queue wait and every attempt), the extraction loop
against a timed view of the engine, and the metrics of the outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extractor.adapters.registry import AdapterRegistry
from extractor.contracts.contract import Task
from extractor.engines import Engine, GenerationRequest, GenerationResult
from extractor.engines.base import OnText, generate_streaming, has_token_budget
from extractor.errors import DeadlineExceeded, ExtractionFailed
from extractor.longdoc import extract_document, stream_document
from extractor.pipeline.options import ExtractOptions
from extractor.pipeline.result import Extraction
from service.engine import EngineHolder
from service.metrics import Metrics
from service.models import RequestOptions, extract_options
from service.queue import AdmissionQueue, request_cost

#: documents up to this many characters are counted with the engine's tokenizer before admission
#: (about a millisecond per 3,000 characters, on the event loop), longer ones estimated
COUNTED_CHARS = 20_000


class TimedEngine(Engine):
    """The engine, seen by one request: counts the time spent in `generate`, calls and tokens."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine
        self.name = engine.name
        self.model = engine.model
        self.seconds = 0.0
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        if has_token_budget(engine):  # chunking measures prompts with the engine's own tokenizer
            self.context_length = engine.context_length
            self.count_prompt_tokens = engine.count_prompt_tokens

    async def prepare(self, schema: Mapping[str, Any]) -> None:
        """The engine's own (grounded decoding compiles or checks a document's grammar here first)."""
        await self.inner.prepare(schema)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        started = time.perf_counter()
        self.calls += 1
        try:
            results = await self.inner.generate(requests)
        finally:
            self.seconds += time.perf_counter() - started
        self._count(results)
        return results

    async def generate_streaming(self, request: GenerationRequest, on_text: OnText) -> GenerationResult:
        """The engine's own streaming where it has it (`TextStreaming`), counted like `generate`."""
        started = time.perf_counter()
        self.calls += 1
        try:
            result = await generate_streaming(self.inner, request, on_text)
        finally:
            self.seconds += time.perf_counter() - started
        self._count([result])
        return result

    def _count(self, results: Sequence[GenerationResult]) -> None:
        self.prompt_tokens += sum(r.prompt_tokens for r in results)
        self.completion_tokens += sum(r.completion_tokens for r in results)


@dataclass(frozen=True)
class Outcome:
    extraction: Extraction[Any]
    engine_s: float
    queue_s: float


class Pipeline:
    def __init__(self, engines: EngineHolder, queue: AdmissionQueue, metrics: Metrics, *,
                 deadline_s: float, defaults: ExtractOptions, adapters: AdapterRegistry | None = None) -> None:
        self.engines = engines
        self.queue = queue
        self.metrics = metrics
        self.deadline_s = deadline_s
        #: the server's options (`EXTRACTOR_MAX_RETRIES`, ...); a request's `options` override them
        self.defaults = defaults
        #: schema -> LoRA adapter (`EXTRACTOR_ADAPTERS`)
        self.adapters = adapters if adapters is not None else AdapterRegistry()

    @staticmethod
    def _cost(engine: Engine, text: str) -> int:
        """The admission slots of a document (`request_cost`): its tokens by the engine's own
        tokenizer where it has one and the text is short enough to count at once, else estimated."""
        if has_token_budget(engine) and len(text) <= COUNTED_CHARS:
            return request_cost(engine.count_prompt_tokens([{"role": "user", "content": text}]))
        return request_cost(len(text) // 4)

    async def stream(self, task: Task[Any], text: str, options: RequestOptions) -> AsyncIterator[dict[str, Any]]:
        """The events of one document (`extractor.longdoc.stream_document`), admitted and under
        the deadline like `extract`."""
        engine = TimedEngine(self.engines.get())
        merged = self.defaults.merged(extract_options(options))
        deadline = min(getattr(options, "timeout_s", None) or self.deadline_s, self.deadline_s)
        try:
            async with asyncio.timeout(deadline) as timer, self.queue.slot(deadline, self._cost(engine, text)):
                async for event in stream_document(engine, task, text, merged):
                    yield event
        except TimeoutError as exc:
            if not timer.expired():
                raise
            raise DeadlineExceeded(f"no result within the {deadline:g} s deadline",
                                   deadline_s=deadline, engine_calls=engine.calls) from exc

    async def extract(self, task: Task[Any], text: str, options: RequestOptions) -> Outcome:
        engine = TimedEngine(self.engines.get())
        merged = self.defaults.merged(extract_options(options))
        deadline = min(getattr(options, "timeout_s", None) or self.deadline_s, self.deadline_s)
        started = time.perf_counter()
        queue_s = 0.0
        outcome = "error"
        failures = 0
        try:
            async with asyncio.timeout(deadline) as timer:
                async with self.queue.slot(deadline, self._cost(engine, text)):
                    queue_s = time.perf_counter() - started
                    self.metrics.queue_wait.observe(queue_s)
                    result = await extract_document(engine, task, text, merged, self.adapters.ref_for(task))
            outcome, failures = "ok", len(result.meta.errors)
            return Outcome(result, engine.seconds, queue_s)
        except TimeoutError as exc:
            if not timer.expired():
                raise
            where = "in the queue" if engine.calls == 0 else f"after {engine.calls} engine call(s)"
            raise DeadlineExceeded(f"no result within the {deadline:g} s deadline ({where})",
                                   deadline_s=deadline, engine_calls=engine.calls) from exc
        except ExtractionFailed as exc:
            outcome, failures = "failed", exc.attempts
            raise
        finally:
            if engine.calls:
                self.metrics.extraction(task.name, outcome=outcome, attempts=engine.calls, failures=failures,
                                        engine_s=engine.seconds, prompt_tokens=engine.prompt_tokens,
                                        completion_tokens=engine.completion_tokens)
