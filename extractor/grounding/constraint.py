"""Grounded decoding's per-document constraint, bounded in size and time, built off the event
loop and cached.

`ConstraintBuilder.constraint(schema, document)` returns a `DocumentConstraint`: the
per-document schema of `constrain_to_document` with status `"full"`, or the schema unchanged with
status `"fallback:<reason>"` where building it would cost more than its `ConstraintBudget`:

- `fallback:document_too_long`: more than `max_document_chars` characters (not even tried);
- `fallback:too_large`: the per-document schema is larger than `max_schema_bytes` (the grammar's
  compile time and memory grow with it);
- `fallback:too_many_spans`: the document offers more candidate spans than `constrain_to_document`
  takes even as single words, so its free-text fields would be left free;

(these three keep one thing of the constraint: every list's `maxItems`, `bound_lists`, which
leaves the schema as small as the task's but the output bounded: the one-line invoice of 400
amounts of issue 17 ran to `max_tokens` on SmolLM2 and past every deadline without it)
- `fallback:build_timeout`: building it took longer than `build_timeout_s`, counted from when the
  build started, not while it waited behind other documents' builds (256 documents at once are a
  queue, not slow documents), or it waited more than `build_queue_s` to start (the build goes on
  in the background and lands in the cache; the call does not wait for it);
- `fallback:build_error`: building it raised.

(`fallback:compile_timeout` and `fallback:compile_error` are the pipeline's, for an engine that
compiles the grammar in-process: `extractor.pipeline.loop`.) A call that falls back decodes with
the task's own strict schema and checks every value against the document afterwards (the
`require_grounded` validator), so it is still grounded, after the fact.

Builds run in a small thread pool of their own (never on the event loop, never in the default
pool that other blocking work shares) and at most once per (schema, document): concurrent calls
for the same pair wait for the same build, and finished builds are kept (LRU, `max_entries`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from extractor.grounding.decoding import SPAN_DEF, ConstraintTooLarge, bound_lists, constrain_to_document, has_free_text

__all__ = ["DEFAULT_BUDGET", "SIZE_REASONS", "ConstraintBudget", "ConstraintBuilder", "DocumentConstraint",
           "bounded_fallback", "build_constraint", "default_builder"]

FULL = "full"


@dataclass(frozen=True)
class ConstraintBudget:
    """How much one document's constraint may cost (figures: bench/grounding_cost.py)."""

    #: longer documents are decoded plain (and checked afterwards); every dev and sroie-dev document
    #: is under 1,300 characters; a 5,000-character invoice's constraint takes 40 ms to build and a
    #: 20,000-character one's 200 ms (Python), past the 50 ms a call should wait
    max_document_chars: int = 4_000
    #: the largest per-document schema used, in bytes of JSON (checked on the document's spans
    #: before the rest is built): the local engine builds its grammar lazily (llguidance, about
    #: 0.5 ms per KB to the first token), but xgrammar, which the vLLM engines use, compiles it
    #: ahead in tens of ms per KB; the dev and sroie-dev documents' schemas are at most 21 KB
    max_schema_bytes: int = 24 * 1024
    #: the longest a call waits for the per-document schema to be built, from the build's start
    build_timeout_s: float = 1.0
    #: the longest a call waits for its build to start, behind other documents' builds
    build_queue_s: float = 30.0
    #: the longest a call waits for an in-process engine to compile its grammar (`Engine.prepare`)
    compile_timeout_s: float = 5.0


DEFAULT_BUDGET = ConstraintBudget()


@dataclass(frozen=True)
class DocumentConstraint:
    #: the schema to decode with: the per-document one, or the task's own on a fallback
    schema: Mapping[str, Any]
    #: "full", or "fallback:<reason>"
    status: str

    @property
    def full(self) -> bool:
        return self.status == FULL


def fallback(schema: Mapping[str, Any], reason: str) -> DocumentConstraint:
    return DocumentConstraint(schema, f"fallback:{reason}")


#: the fallbacks for size, whose schema has its lists bounded (`bounded_fallback`)
SIZE_REASONS = frozenset({"document_too_long", "too_many_spans", "too_large"})


def bounded_fallback(schema: Mapping[str, Any], document: str, reason: str) -> DocumentConstraint:
    """A fallback past a size limit: the task's schema with only its lists bounded by what the
    document can fill (`bound_lists`), so the output stays bounded too; the task's own schema
    object where that bounds nothing."""
    bounded = bound_lists(schema, document)
    return fallback(schema if bounded == schema else bounded, reason)


def build_constraint(schema: Mapping[str, Any], document: str, budget: ConstraintBudget) -> DocumentConstraint:
    """The per-document constraint within `budget`'s size limits (blocking; `ConstraintBuilder`
    runs it off the event loop with the time limit)."""
    if len(document) > budget.max_document_chars:
        return bounded_fallback(schema, document, "document_too_long")
    try:
        constrained = constrain_to_document(schema, document, max_bytes=budget.max_schema_bytes)
    except ConstraintTooLarge:
        return bounded_fallback(schema, document, "too_large")
    if SPAN_DEF not in constrained.get("$defs", {}) and has_free_text(schema):
        return bounded_fallback(schema, document, "too_many_spans")
    if len(json.dumps(constrained)) > budget.max_schema_bytes:
        return bounded_fallback(schema, document, "too_large")
    return DocumentConstraint(constrained, FULL)


Build = Callable[[Mapping[str, Any], str, ConstraintBudget], DocumentConstraint]


def _key(schema: Mapping[str, Any], document: str) -> str:
    digest = hashlib.sha256(json.dumps(schema, sort_keys=True).encode())
    digest.update(b"\0")
    digest.update(document.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


class ConstraintBuilder:
    """Builds constraints in `workers` threads of its own, once per (schema, document), keeping
    the last `max_entries` (see the module's doc)."""

    def __init__(self, build: Build = build_constraint, *, budget: ConstraintBudget = DEFAULT_BUDGET,
                 workers: int = 2, max_entries: int = 256) -> None:
        self._build = build
        self.budget = budget
        self.max_entries = max_entries
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grounding-build")
        self._builds: OrderedDict[str, Future[DocumentConstraint]] = OrderedDict()
        #: when each queued build started (time.monotonic()), by key; absent: still waiting
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    def _submit(self, schema: Mapping[str, Any], document: str) -> tuple[str, Future[DocumentConstraint]]:
        key = _key(schema, document)
        with self._lock:
            found = self._builds.get(key)
            if found is not None:
                self._builds.move_to_end(key)
                return key, found
            future = self._pool.submit(self._guarded, key, schema, document)
            self._builds[key] = future
            while len(self._builds) > self.max_entries:
                self._builds.popitem(last=False)
            return key, future

    def _guarded(self, key: str, schema: Mapping[str, Any], document: str) -> DocumentConstraint:
        self._started[key] = time.monotonic()
        try:
            return self._build(schema, document, self.budget)
        except Exception:
            return fallback(schema, "build_error")
        finally:
            self._started.pop(key, None)

    def _wait_left(self, key: str, queued_at: float) -> float:
        """Seconds a call may still wait for the build of `key`: `build_timeout_s` from the build's
        start, or `build_queue_s` from the call while the build waits for a thread."""
        started = self._started.get(key)
        if started is None:
            return queued_at + self.budget.build_queue_s - time.monotonic()
        return started + self.budget.build_timeout_s - time.monotonic()

    async def constraint(self, schema: Mapping[str, Any], document: str) -> DocumentConstraint:
        """The constraint of `document` under `schema`, or a fallback to `schema` (its lists bounded
        where the fallback is for size) past the budget."""
        queued_at = time.monotonic()
        key, future = self._submit(schema, document)
        if not future.done():
            loop = asyncio.get_running_loop()
            ready = loop.create_future()

            def settle() -> None:
                if not ready.done():
                    ready.set_result(None)

            def wake(_: Future[DocumentConstraint]) -> None:
                try:  # the loop may be gone by the time a build that timed out finishes
                    loop.call_soon_threadsafe(settle)
                except RuntimeError:
                    pass

            future.add_done_callback(wake)
            while not ready.done():
                left = self._wait_left(key, queued_at)
                if left <= 0:
                    return fallback(schema, "build_timeout")
                try:  # at most until the build starts (or its own budget ends), then again
                    await asyncio.wait_for(asyncio.shield(ready), min(left, self.budget.build_timeout_s))
                except TimeoutError:
                    continue
        built = future.result()
        if built.full or built.schema != schema:
            return built  # the per-document schema, or the task's with its lists bounded
        # a cached build of an equal schema object: hand back the caller's own on a plain fallback
        return fallback(schema, built.status.removeprefix("fallback:"))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_DEFAULT: ConstraintBuilder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_builder() -> ConstraintBuilder:
    """The process's builder (made on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ConstraintBuilder()
        return _DEFAULT


def set_default_builder(builder: ConstraintBuilder | None) -> ConstraintBuilder | None:
    """Replace the process's builder (tests, a service with its own budget); returns the previous one."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        previous, _DEFAULT = _DEFAULT, builder
        return previous
