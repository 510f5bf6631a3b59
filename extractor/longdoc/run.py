"""A long document, or many records, end to end: chunk, extract, merge by span, check, stream.

`extract_document` is the entry point of every extraction: a document whose prompt and output
budget fit the model's context (and no `many`) goes straight to `extract_one`; otherwise
`LongRun` cuts it (`split`), extracts every chunk with a derived task (`tasks`), the first round
of all chunks in ONE engine call so they batch, merges the chunks' records by source span
(`merge`), checks the lists (`completeness`), runs later passes over what is still unread
(`passes`, or one more when a list is found short), validates the merged record with the task's
own validators and, where that fails, re-runs only the chunks the errors point at, with the
errors fed back.

Both run on the document's visible text (`extractor.pipeline.visible`: invisible format characters
removed), and map every offset they return (`meta.spans`, items' `start`/`end`) back to the document
as given.

`LongRun.events` streams it: list items (or records, `many`) as soon as every chunk that could
read them has answered, then the other fields, then the result; a sent value is never sent again
nor changed (`locked` in `merge`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from extractor.contracts.contract import Task
from extractor.engines.base import AdapterRef, Engine
from extractor.errors import EmptyDocument, ExtractionFailed
from extractor.grounding.spans import Span
from extractor.longdoc.budget import (
    CHARS_PER_TOKEN,
    DEFAULT_CHUNK_TOKENS,
    chunk_budget,
    context_length,
    fits_whole,
    prompt_tokens,
)
from extractor.longdoc.completeness import check_list
from extractor.longdoc.merge import ChunkRecord, Item, Merged, chunk_record, merge_records
from extractor.longdoc.split import Chunk, split_document
from extractor.longdoc.tasks import RECORDS, part_task, records_task
from extractor.pipeline.documents import check_unicode
from extractor.pipeline.loop import extract_one, extract_together
from extractor.pipeline.options import DEFAULT_OPTIONS, ExtractOptions
from extractor.pipeline.prompt import build_messages
from extractor.pipeline.result import Extraction, Meta
from extractor.pipeline.validate import Invalid, Valid, validate_output
from extractor.pipeline.visible import VisibleText, visible_text

#: a document longer than this many default chunks is chunked even where it would fit the context
LONG_CHUNKS = 3
_PATH = re.compile(r"^\$\.([A-Za-z_][\w-]*)(\[\d+\])?")


def needs_chunks(engine: Engine, task: Task[Any], document: str, options: ExtractOptions) -> bool:
    """Chunk when asked for many records, when the prompt and output budget do not fit the
    context, or when the document is longer than `LONG_CHUNKS` chunks (`chunk_tokens`, or the
    default): a small model reads a long input poorly and its lists outgrow any output budget."""
    if options.many:
        return True
    if options.chunking == "off":
        return False
    chunk = options.chunk_tokens or DEFAULT_CHUNK_TOKENS
    limit = chunk if options.chunk_tokens else chunk * LONG_CHUNKS
    if len(document) > limit * CHARS_PER_TOKEN * 4:  # surely longer, without counting
        return True
    messages = build_messages(task, document)
    chars = sum(len(m["content"]) for m in messages)
    context = context_length(engine)
    if chars > context * 16:  # no need to count a prompt of megabytes
        return True
    if len(document) > limit and prompt_tokens(engine, [{"role": "user", "content": document}]) > limit:
        return True
    return not fits_whole(engine, messages, task.max_tokens)


def _visible(document: str) -> VisibleText:
    """What the model reads of `document` (`extractor.pipeline.visible`); empty is refused."""
    view = visible_text(document)
    if not view.text.strip():
        raise EmptyDocument("the document is empty" + (" (it holds only invisible characters)" if view.removed else ""))
    return view


def _on_original(view: VisibleText, extraction: Extraction[Any]) -> Extraction[Any]:
    """`extraction` (of `view.text`) with its spans as offsets into the original document."""
    if not view.removed or extraction.meta.spans is None:
        return extraction
    return replace(extraction, meta=replace(extraction.meta, spans=view.spans(extraction.meta.spans)))


def _event_on_original(view: VisibleText, event: dict[str, Any]) -> dict[str, Any]:
    """A stream event (`LongRun.events`) with its offsets into the original document."""
    if not view.removed:
        return event
    if "start" in event:
        event = {**event, "start": view.start(event["start"]), "end": view.end(event["end"])}
    spans = event.get("meta", {}).get("spans") if event["event"] == "result" else None
    if spans is not None:
        mapped = {path: [view.span(Span.from_dict(s)).to_dict() for s in found] for path, found in spans.items()}
        event = {**event, "meta": {**event["meta"], "spans": mapped}}
    return event


async def extract_document(engine: Engine, task: Task[Any], document: str,
                           options: ExtractOptions = DEFAULT_OPTIONS, adapter: AdapterRef | None = None) -> Extraction[Any]:
    """One document, whatever its length: `extract_one` when it fits (with the task's LoRA
    `adapter`, if any), else chunked (`LongRun`; chunk tasks are other tasks, run on the base model).
    The model reads the visible text; spans point into `document`."""
    view = _visible(document)
    if needs_chunks(engine, task, view.text, options):
        return _on_original(view, await LongRun(engine, task, view.text, options).run())
    return _on_original(view, await extract_one(engine, task, view.text, options, adapter))


async def stream_document(engine: Engine, task: Task[Any], document: str,
                          options: ExtractOptions = DEFAULT_OPTIONS,
                          adapter: AdapterRef | None = None) -> AsyncIterator[dict[str, Any]]:
    """Events of one document (see `LongRun.events`); a short one gives its fields, then the result.
    The model reads the visible text; offsets point into `document`."""
    view = _visible(document)
    if needs_chunks(engine, task, view.text, options):
        async for event in LongRun(engine, task, view.text, options).events():
            yield _event_on_original(view, event)
        return
    extraction = _on_original(view, await extract_one(engine, task, view.text, options, adapter))
    data = extraction.data_dict()
    for name, value in (data.items() if isinstance(data, dict) else ()):
        yield {"event": "field", "field": name, "value": value}
    yield {"event": "result", **extraction.to_dict()}


@dataclass
class _Job:
    chunk: Chunk  # its text as extracted (later passes: what earlier passes took blanked out)
    pass_no: int
    feedback: list[str] | None = None


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + "".join(c if c in "\n\f" else " " for c in text[start:end]) + text[end:]


class LongRun:
    """One chunked document (see the module docstring)."""

    def __init__(self, engine: Engine, task: Task[Any], document: str, options: ExtractOptions) -> None:
        check_unicode(document)
        self.engine, self.task, self.document, self.options = engine, task, document, options
        self.started = time.perf_counter()
        head = build_messages(task, "")[:-1]
        self.budget = chunk_budget(engine, head, document, task_max_tokens=task.max_tokens,
                                   wanted_tokens=options.chunk_tokens)
        self.many = options.many
        self.chunk_task = (records_task(task, self.budget.max_tokens) if self.many
                           else part_task(task, self.budget.max_tokens))
        self.chunks = split_document(document, self.budget.chunk_chars)
        self.records: dict[tuple[int, int], ChunkRecord] = {}  # (pass, chunk) -> its record
        self.attempts = self.prompt_tokens = self.completion_tokens = 0
        self.errors: list[list[str]] = []
        self.failed_chunks: list[int] = []
        self.retried_chunks: list[int] = []
        self.regrown: list[int] = []
        self.passes_run = 0
        #: what was streamed: list field -> anchor -> value
        self.locked: dict[str, dict[tuple[int, int], Any]] = {}

    # -- extraction -----------------------------------------------------------------------
    @property
    def list_fields(self) -> list[str]:
        schema = self.chunk_task.strict_schema
        return [n for n, node in schema.get("properties", {}).items() if node.get("type") == "array"]

    def _take(self, job: _Job, outcome: Extraction[Any] | ExtractionFailed) -> None:
        if isinstance(outcome, ExtractionFailed):
            self.attempts += outcome.attempts
            self.errors.extend(outcome.errors)
            self.failed_chunks.append(job.chunk.index)
            return
        meta = outcome.meta
        self.attempts += meta.attempts
        self.prompt_tokens += meta.prompt_tokens
        self.completion_tokens += meta.completion_tokens
        self.errors.extend(meta.errors)
        if any("output cut off" in e for errors in meta.errors for e in errors):
            self.regrown.append(job.chunk.index)
        data = outcome.data_dict()
        self.records[(job.pass_no, job.chunk.index)] = chunk_record(job.chunk, data, job.pass_no)

    def _chunk_options(self) -> ExtractOptions:
        return self.options.merged({"spans": False, "confidence": False})

    async def _run_jobs(self, jobs: list[_Job], together: bool) -> AsyncIterator[_Job]:
        """Extract `jobs`: in one engine call per round (`together`), or each on its own,
        yielding each job as it is done."""
        if not jobs:
            return
        options = self._chunk_options()
        if together:
            outcomes = await extract_together(
                self.engine, [(self.chunk_task, j.chunk.text, j.feedback) for j in jobs], options)
            for job, outcome in zip(jobs, outcomes, strict=True):
                self._take(job, outcome)
                yield job
            return

        async def one(job: _Job) -> tuple[_Job, Extraction[Any] | ExtractionFailed]:
            (outcome,) = await extract_together(self.engine, [(self.chunk_task, job.chunk.text, job.feedback)], options)
            return job, outcome

        pending = [asyncio.ensure_future(one(j)) for j in jobs]
        try:
            for future in asyncio.as_completed(pending):
                job, outcome = await future
                self._take(job, outcome)
                yield job
        finally:
            for p in pending:
                p.cancel()

    def _later_pass(self, pass_no: int) -> list[_Job]:
        """Jobs of a recall pass: each chunk with the lines of the items already taken blanked."""
        merged = self.merge()
        jobs = []
        for chunk in self.chunks:
            body = chunk.body
            for items in merged.items.values():
                for item in items:
                    if item.anchor is None or not chunk.covers(item.anchor.start):
                        continue
                    line_start = self.document.rfind("\n", 0, item.anchor.start) + 1
                    line_end = self.document.find("\n", item.anchor.end)
                    line_end = len(self.document) if line_end == -1 else line_end
                    body = _blank(body, max(0, line_start - chunk.start), min(len(body), line_end - chunk.start))
            if body.strip():
                jobs.append(_Job(replace(chunk, body=body), pass_no))
        return jobs

    # -- merging ---------------------------------------------------------------------------
    def merge(self) -> Merged:
        return merge_records(list(self.records.values()), self.chunk_task.strict_schema, self.task.merge_rules,
                             self.document, self.locked)

    def _completeness(self, merged: Merged) -> list[dict[str, Any]]:
        record = None if self.many else merged.data
        return [check_list(name, merged.data.get(name) or [], record, self.document) for name in self.list_fields]

    def _concerned(self, errors: list[str], merged: Merged) -> list[int]:
        """The chunks the merged record's validation errors point at (a whole-record error:
        every chunk that gave a value)."""
        chunks: set[int] = set()
        for error in errors:
            match = _PATH.match(error)
            if match is None:  # the record as a whole ("$: items do not add up")
                chunks.update(c for cs in merged.sources.values() for c in cs)
                continue
            key = match.group(1) + (match.group(2) or "")
            found = [c for path, cs in merged.sources.items() if path == key or path.startswith(key + "[")
                     for c in cs]
            chunks.update(found or (c for cs in merged.sources.values() for c in cs))
        return sorted(chunks)

    # -- the whole run ---------------------------------------------------------------------
    async def run(self) -> Extraction[Any]:
        result: Extraction[Any] | None = None
        async for event in self._steps(stream=False):
            if event["event"] == "result":
                result = event["extraction"]
        assert result is not None
        return result

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """`item` (a list field's item; `record` with `many`), `field` (a non-list field) events,
        each sent once and final, then `result` (the extraction, as `Extraction.to_dict`)."""
        async for event in self._steps(stream=True):
            if event["event"] == "result":
                yield {"event": "result", **event["extraction"].to_dict()}
            else:
                yield event

    def _final_items(self, done: set[int]) -> list[tuple[str, Item]]:
        """Items no chunk still running could change: anchored before the first unfinished chunk."""
        unfinished = [c.start for c in self.chunks if c.index not in done]
        frontier = min(unfinished) if unfinished else len(self.document) + 1
        out = []
        merged = self.merge()
        for name, items in merged.items.items():
            sent = self.locked.setdefault(name, {})
            for item in items:
                if item.key is None or item.key in sent:
                    continue
                if item.anchor is not None and item.anchor.start < frontier:
                    sent[item.key] = item.value
                    out.append((name, item))
        return out

    def _item_event(self, name: str, item: Item) -> dict[str, Any]:
        kind = "record" if self.many else "item"
        event: dict[str, Any] = {"event": kind, "data": item.value}
        if not self.many:
            event["field"] = name
        if item.anchor is not None:
            event["start"], event["end"] = item.anchor.start, item.anchor.end
        return event

    async def _steps(self, stream: bool) -> AsyncIterator[dict[str, Any]]:
        done: set[int] = set()
        async for job in self._run_jobs([_Job(c, 1) for c in self.chunks], together=not stream):
            done.add(job.chunk.index)
            if stream:
                for name, item in self._final_items(done):
                    yield self._item_event(name, item)
        self.passes_run = 1
        extra_pass = False
        while True:
            merged = self.merge()
            short = any(not report["complete"] for report in self._completeness(merged))
            if self.passes_run < self.options.passes or (short and not extra_pass):
                extra_pass = extra_pass or self.passes_run >= self.options.passes
                self.passes_run += 1
                async for _ in self._run_jobs(self._later_pass(self.passes_run), together=not stream):
                    pass
                if stream:
                    for name, item in self._final_items(set(range(len(self.chunks)))):
                        yield self._item_event(name, item)
                continue
            break
        extraction = await self._validated(merged)
        if stream:
            for name, item in self._final_items(set(range(len(self.chunks)))):
                yield self._item_event(name, item)
            if not self.many:
                data = extraction.data_dict()
                for name in data:
                    if name not in self.list_fields:
                        yield {"event": "field", "field": name, "value": data[name]}
        yield {"event": "result", "extraction": extraction}

    async def _validated(self, merged: Merged) -> Extraction[Any]:
        """The merged record validated by the task; a failure re-runs the chunks concerned once,
        with the errors fed back, then raises `ExtractionFailed`."""
        for retry in (False, True):
            outcome = self._validate(merged)
            if not isinstance(outcome, Invalid):
                return self._extraction(outcome, merged)
            self.errors.append(outcome.errors)
            if retry or self.options.max_retries == 0:
                break
            concerned = self._concerned(outcome.errors, merged)
            self.retried_chunks = concerned
            jobs = [_Job(self.chunks[i], 1, outcome.errors) for i in concerned]
            async for _ in self._run_jobs(jobs, together=True):
                pass
            merged = self.merge()
        failure = ExtractionFailed(f"{self.task.name}: the merged record of {len(self.chunks)} chunks is not valid: "
                                   f"{'; '.join(self.errors[-1])}", attempts=self.attempts, errors=self.errors)
        failure.partial = merged.data  # type: ignore[attr-defined]
        raise failure

    def _validate(self, merged: Merged) -> Valid[Any] | Invalid:
        if self.many:
            records = merged.data.get(RECORDS) or []
            if self.task.model is None:
                return Valid(records)
            try:
                return Valid([self.task.model.model_validate(r, context={"document": self.document})
                               for r in records])
            except ValueError as exc:
                return Invalid([str(exc)[:500]])
        return validate_output(self.task, json.dumps(merged.data), self.document)

    def _extraction(self, outcome: Valid[Any], merged: Merged) -> Extraction[Any]:
        spans: dict[str, list[Span]] | None = None
        if self.options.spans:
            spans = {(path.removeprefix(RECORDS) if self.many else path): found
                     for path, found in merged.spans.items()}
        long = {
            "chunks": len(self.chunks),
            "chunk_tokens": self.budget.chunk_tokens,
            "passes": self.passes_run,
            "conflicts": merged.conflicts,
            "completeness": self._completeness(merged),
            "failed_chunks": sorted(set(self.failed_chunks)),
            "retried_chunks": self.retried_chunks,
            "regrown_chunks": sorted(set(self.regrown)),
        }
        meta = Meta(schema=self.task.name, version=self.task.version, engine=self.engine.name,
                    model=self.engine.model, attempts=self.attempts, errors=self.errors,
                    prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                    latency_ms=(time.perf_counter() - self.started) * 1000, spans=spans, long=long)
        return Extraction(data=outcome.value, meta=meta)


__all__ = ["LongRun", "extract_document", "needs_chunks", "prompt_tokens", "stream_document"]
