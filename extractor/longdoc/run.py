"""A long document, or many records, end to end: plan, extract, merge by span, check, stream.

`extract_document` is the entry point of every extraction: a document whose prompt and output
budget fit the model's context, whose list rows are few (and no `many`) goes straight to
`extract_one`; otherwise `LongRun` reads it in pieces.

Both run on the document's visible text (`extractor.pipeline.visible`: invisible format characters
removed), and map every offset they return (`meta.spans`, items' `start`/`end`) back to the document
as given.

How the pieces are cut (`LongRun.plan`):

- **by rows**, where a list's rows are found before decoding (`extractor.longdoc.rows`): chunks
  of consecutive rows (their table's header line in front), each extracted with exactly one item
  per row, in order, every item read from its own row (`extractor.grounding.rows`; without
  grounded decoding only the count is held); and the document without those rows (the header
  view), where the other fields are asked, as required as the task says (nullable only where
  the header view itself must be cut in several pieces). With `many`, the rows are the records
  (a paragraph per person: one record or none per paragraph).
- **by size** otherwise (`split`): overlapping chunks, every field nullable in each.

The first round of every piece goes to the engine in ONE call, so they batch. The pieces'
records are merged by source span (`merge`: a non-null value wins over a null, conflicts settled
by the field's rule); the lists are checked (`completeness`): rows that got no item (a piece
that failed) are re-run, and in a by-size plan a list found short of what the document prints
gets a recall pass over what is still unread (`passes` asks for more). The merged record is
validated with the task's own validators; where that fails, only the pieces the errors point at
are re-run once, with the errors fed back (a whole-record error of a by-rows plan: the header
view, whose total or count the complete rows contradict).

`LongRun.events` streams it: list items (or records, `many`) as soon as every piece that could
read them has answered, then the other fields, then the result; a sent value is never sent again
nor changed (`locked` in `merge`).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from extractor.contracts.contract import Task
from extractor.engines.base import AdapterRef, Engine
from extractor.errors import EmptyDocument, ExtractionFailed
from extractor.grounding.rows import constrain_rows
from extractor.grounding.spans import Span
from extractor.longdoc.budget import (
    CHARS_PER_TOKEN,
    DEFAULT_CHUNK_TOKENS,
    MESSAGE_OVERHEAD,
    chunk_budget,
    context_length,
    fits_whole,
    item_tokens,
    prompt_tokens,
    rows_max_tokens,
)
from extractor.longdoc.completeness import check_list, printed_counts
from extractor.longdoc.merge import ChunkRecord, Item, Merged, chunk_record, merge_records
from extractor.longdoc.rows import MAX_ROWS_PER_CHUNK, Row, RowPlan, find_rows, header_view, list_item, row_chunks
from extractor.longdoc.split import Chunk, Piece, split_document
from extractor.longdoc.tasks import RECORDS, header_task, part_task, records_task, rows_task
from extractor.pipeline.documents import check_unicode
from extractor.pipeline.loop import Job, extract_one, extract_together
from extractor.pipeline.options import DEFAULT_OPTIONS, ExtractOptions
from extractor.pipeline.prompt import build_messages
from extractor.pipeline.result import Extraction, Meta
from extractor.pipeline.streaming import FieldStream
from extractor.pipeline.validate import Invalid, Valid, validate_output
from extractor.pipeline.visible import VisibleText, visible_text

log = logging.getLogger(__name__)

#: by rows, at most this many passes after the first re-run the rows still unread
MAX_RERUNS = 3
#: rows read per engine request. One: a small model reads one row (with its table's header line)
#: as it reads a short document, and every row of the document decodes at once, in one batch, so
#: a 50-row invoice takes as many decoding steps as its longest item instead of all its items
#: one after another (SmolLM2-135M on the CPU: bench/results/eval_long_local.json)
ROWS_PER_REQUEST = 1
#: a document longer than this many default chunks is chunked even where it would fit the context
LONG_CHUNKS = 3
_PATH = re.compile(r"^\$\.([A-Za-z_][\w-]*)(\[\d+\])?")


def list_fields(schema: Mapping[str, Any]) -> list[str]:
    """The top-level fields of `schema` that are lists (nullable lists too)."""
    return [name for name, node in schema.get("properties", {}).items() if list_item(node, schema) is not None]


def row_plan(task: Task[Any], document: str, many: bool) -> RowPlan | None:
    """The rows of the task's first list that has them (`many`: the records' rows)."""
    schema = task.strict_schema
    if many:
        return find_rows(document, schema, schema, RECORDS, many=True)
    for name in list_fields(schema):
        item = list_item(schema["properties"][name], schema)
        if item is not None and (plan := find_rows(document, item, schema, name, many=False)) is not None:
            return plan
    return None


def needs_chunks(engine: Engine, task: Task[Any], document: str, options: ExtractOptions) -> bool:
    """Chunk when asked for many records, when the prompt and output budget do not fit the
    context, when the document is longer than `LONG_CHUNKS` chunks (`chunk_tokens`, or the
    default): a small model reads a long input poorly and its lists outgrow any output budget;
    or when a list has more rows than one chunk takes (`MAX_ROWS_PER_CHUNK`)."""
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
    if not fits_whole(engine, messages, task.max_tokens):
        # a document no longer than one chunk gains nothing from chunking: the prompt is long for the
        # schema's sake (a real-world schema of 15 KB), and its piece tasks would lose the raw schema's
        # fallback grammar; the loop fits the output budget to the room left (`_Attempts._fit`)
        return len(document) > chunk * CHARS_PER_TOKEN
    plan = row_plan(task, document, many=False)
    return plan is not None and len(plan.rows) > MAX_ROWS_PER_CHUNK


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
    `adapter`, if any), else in pieces (`LongRun`; piece tasks are other tasks, run on the base model).
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
    watch = FieldStream(task, view.text)
    run = asyncio.ensure_future(extract_one(engine, task, view.text, options, adapter, watch))
    waiting: asyncio.Future[dict[str, Any]] | None = None
    try:
        while not run.done() or not watch.events.empty():
            if not watch.events.empty():
                yield watch.events.get_nowait()
                continue
            waiting = asyncio.ensure_future(watch.events.get())
            await asyncio.wait({run, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                yield waiting.result()
            else:
                waiting.cancel()
            waiting = None
        extraction = _on_original(view, run.result())
    finally:
        if waiting is not None:
            waiting.cancel()
        if not run.done():  # the consumer went away (a client gone, a deadline): stop the extraction
            run.cancel()
            await asyncio.wait({run})
        if run.done() and not run.cancelled():
            run.exception()  # retrieved: raised above, or of no interest to a consumer gone
    data = extraction.data_dict()
    for name, value in (data.items() if isinstance(data, dict) else ()):
        if name not in watch.sent:
            yield {"event": "field", "field": name, "value": value}
        elif watch.sent[name] != value:  # a model validator rewrote a sent field (see pipeline.streaming)
            log.warning("%s: the streamed field %r was %r, the result has %r", task.name, name, watch.sent[name], value)
    yield {"event": "result", **extraction.to_dict()}


@dataclass
class _Job:
    """One piece of the document and the task it is read with."""

    piece: Piece  # its text as extracted (later passes: what earlier passes took blanked out)
    task: Task[Any]
    #: "rows" (a chunk of a list's rows), "header" (the document without them), "chunk" (by size)
    role: str
    pass_no: int = 1
    feedback: list[str] | None = None
    rows: tuple[Row, ...] = ()

    @property
    def index(self) -> int:
        return self.piece.index


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + "".join(c if c in "\n\f" else " " for c in text[start:end]) + text[end:]


class LongRun:
    """One document read in pieces (see the module docstring)."""

    def __init__(self, engine: Engine, task: Task[Any], document: str, options: ExtractOptions) -> None:
        check_unicode(document)
        self.engine, self.task, self.document, self.options = engine, task, document, options
        self.started = time.perf_counter()
        self.many = options.many
        head = build_messages(task, "")[:-1]
        self.head_tokens = prompt_tokens(engine, head) + MESSAGE_OVERHEAD
        self.budget = chunk_budget(engine, head, document, task_max_tokens=task.max_tokens,
                                   wanted_tokens=options.chunk_tokens)
        self.lists = [RECORDS] if self.many else list_fields(task.strict_schema)
        self.merge_schema: Mapping[str, Any] = (
            {"properties": {RECORDS: {"type": "array"}}} if self.many else task.strict_schema)
        self.plan = row_plan(task, document, self.many)
        self.jobs: list[_Job] = self._plan_jobs()
        self.records: dict[tuple[int, int], ChunkRecord] = {}  # (pass, piece) -> its record
        self.attempts = self.prompt_tokens = self.completion_tokens = 0
        self.errors: list[list[str]] = []
        self.failed: set[int] = set()  # pieces whose last extraction failed
        self.failed_chunks: list[int] = []
        self.retried_chunks: list[int] = []
        self.rerun_rows = 0
        self.loose_left_out = 0
        self.regrown: list[int] = []
        self.passes_run = 0
        #: what was streamed: list field -> anchor -> value
        self.locked: dict[str, dict[tuple[int, int], Any]] = {}

    # -- planning -------------------------------------------------------------------------------
    @property
    def chunks(self) -> list[Piece]:
        return [j.piece for j in self.jobs]

    def _plan_jobs(self) -> list[_Job]:
        if self.plan is None:
            chunk_task = (records_task(self.task, self.budget.max_tokens) if self.many
                          else part_task(self.task, self.budget.max_tokens))
            self.chunk_task = chunk_task
            return [_Job(c, chunk_task, "chunk") for c in split_document(self.document, self.budget.chunk_chars)]
        jobs = self._row_jobs(list(self.plan.rows), 0, 1)
        if not self.many:
            jobs += self._header_jobs(len(jobs))
        return jobs

    def _row_jobs(self, rows: list[Row], first_index: int, pass_no: int) -> list[_Job]:
        assert self.plan is not None
        plan = self.plan
        item = self.task.strict_schema if self.many else list_item(self.task.strict_schema["properties"][plan.field],
                                                                    self.task.strict_schema)
        per_item = item_tokens(item or {})
        jobs = []
        for excerpt, group in row_chunks(self.document, rows, self.budget.chunk_chars, first_index, ROWS_PER_REQUEST):
            row_chars = sum(r.end - r.start for r in group)
            max_tokens = rows_max_tokens(self.budget, row_chars, len(group), per_item, self.head_tokens,
                                         context_length(self.engine))
            task = (records_task(self.task, max_tokens, nullable=not plan.firm) if self.many
                    else rows_task(self.task, plan.field, max_tokens))
            jobs.append(_Job(excerpt, task, "rows", pass_no, rows=tuple(group)))
        return jobs

    def _header_jobs(self, first_index: int) -> list[_Job]:
        assert self.plan is not None
        view = header_view(self.document, list(self.plan.rows), first_index)
        if view is None:
            return []
        lists = [self.plan.field]
        if not [f for f in self.task.strict_schema.get("properties", {}) if f not in lists]:
            return []  # nothing but the list
        if len(view.text) <= self.budget.chunk_chars:
            return [_Job(view, header_task(self.task, lists, self.task.max_tokens), "header")]
        task = header_task(self.task, lists, self.budget.max_tokens, part=True)
        pieces = split_document(view.text, self.budget.chunk_chars)
        return [_Job(view.slice(c.start, c.end, first_index + k), task, "header") for k, c in enumerate(pieces)]

    def _schema(self, job: _Job) -> tuple[Mapping[str, Any] | None, str | None]:
        """The schema the engine enforces for a job of rows: one item per row (see the module doc)."""
        if job.role != "rows" or self.plan is None:
            return None, None
        grounded = self.options.grounded_for(self.task)
        schema = constrain_rows(job.task.strict_schema, self.plan.field, [r.as_text() for r in job.rows],
                                grounded=grounded)
        return schema, "rows" if grounded else "rows:count"

    # -- extraction -----------------------------------------------------------------------
    def _take(self, job: _Job, outcome: Extraction[Any] | ExtractionFailed) -> None:
        if isinstance(outcome, ExtractionFailed):
            self.attempts += outcome.attempts
            self.errors.extend(outcome.errors)
            self.failed_chunks.append(job.index)
            self.failed.add(job.index)
            return
        self.failed.discard(job.index)
        meta = outcome.meta
        self.attempts += meta.attempts
        self.prompt_tokens += meta.prompt_tokens
        self.completion_tokens += meta.completion_tokens
        self.errors.extend(meta.errors)
        if any("output cut off" in e for errors in meta.errors for e in errors):
            self.regrown.append(job.index)
        data = outcome.data_dict()
        rows = (self.plan.field, [(r.start, r.text) for r in job.rows]) if self.plan and job.role == "rows" else None
        self.records[(job.pass_no, job.index)] = chunk_record(job.piece, data, job.pass_no, rows)

    def _chunk_options(self) -> ExtractOptions:
        return self.options.merged({"spans": False, "confidence": False})

    def _engine_job(self, job: _Job) -> Job:
        schema, status = self._schema(job)
        return Job(job.task, job.piece.text, job.feedback, schema, status, patient=True)

    async def _run_jobs(self, jobs: list[_Job], together: bool) -> AsyncIterator[_Job]:
        """Extract `jobs`: in one engine call per round (`together`), or each on its own,
        yielding each job as it is done."""
        if not jobs:
            return
        options = self._chunk_options()
        if together:
            outcomes = await extract_together(self.engine, [self._engine_job(j) for j in jobs], options)
            for job, outcome in zip(jobs, outcomes, strict=True):
                self._take(job, outcome)
                yield job
            return

        async def one(job: _Job) -> tuple[_Job, Extraction[Any] | ExtractionFailed]:
            (outcome,) = await extract_together(self.engine, [self._engine_job(job)], options)
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
        """Jobs of a later pass. By rows: the rows no item was read from (a failed piece, a row
        skipped), in new chunks, and a failed header piece again. By size: each chunk with the
        lines of the items already taken blanked."""
        merged = self.merge()
        if self.plan is not None:
            missing = self._unread_rows(merged)
            self.rerun_rows += len(missing)
            jobs = self._row_jobs(missing, len(self.jobs), pass_no)
            jobs += [replace(j, pass_no=pass_no) for j in self.jobs if j.role == "header" and j.index in self.failed]
            self.jobs += [j for j in jobs if j.role == "rows"]
            return jobs
        jobs = []
        for job in self.jobs:
            chunk = job.piece
            assert isinstance(chunk, Chunk)
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
                jobs.append(_Job(replace(chunk, body=body), job.task, "chunk", pass_no))
        return jobs

    def _unread_rows(self, merged: Merged) -> list[Row]:
        """The planned rows still unread: a firm row without an item anchored in it, a loose row
        whose piece never answered (a loose row answered null is answered)."""
        assert self.plan is not None
        answered: set[tuple[int, int]] = set()
        read = {index for _, index in self.records}
        for job in self.jobs:
            if job.role == "rows" and job.index in read:
                answered.update((r.start, r.end) for r in job.rows if not r.firm)
        anchors = sorted(i.anchor.start for i in merged.items.get(self.plan.field, []) if i.anchor is not None)
        out = []
        for row in self.plan.rows:
            k = bisect.bisect_left(anchors, row.start)
            if (k < len(anchors) and anchors[k] < row.end) or (row.start, row.end) in answered:
                continue
            out.append(row)
        return out

    # -- merging ---------------------------------------------------------------------------
    def _loose_piece(self, index: int) -> bool:
        """Whether piece `index` reads only loose rows (rows that may hold no item)."""
        job = next((j for j in self.jobs if j.index == index), None)
        return job is not None and job.role == "rows" and not any(r.firm for r in job.rows)

    def merge(self) -> Merged:
        """The records merged. Where loose rows were read (paragraphs of another shape than the
        rest) and the items of the firm rows alone are as many as the document says it lists
        ("introduces 20 employees"), the loose rows' items are left out: the count settles them."""
        records = list(self.records.values())
        loose = [r for r in records if self._loose_piece(r.chunk.index)]
        if loose and self.plan is not None:
            firm = merge_records([r for r in records if r not in loose], self.merge_schema, self.task.merge_rules,
                                 self.document, self.locked, self.lists)
            if len(firm.items.get(self.plan.field, [])) in printed_counts(self.document):
                self.loose_left_out = sum(len(r.data.get(self.plan.field) or []) for r in loose)
                return firm
        self.loose_left_out = 0
        return merge_records(records, self.merge_schema, self.task.merge_rules, self.document, self.locked,
                             self.lists)

    def _completeness(self, merged: Merged) -> list[dict[str, Any]]:
        record = None if self.many else merged.data
        reports = [check_list(name, merged.data.get(name) or [], record, self.document) for name in self.lists]
        if self.plan is not None:
            unread = len(self._unread_rows(merged))
            for report in reports:
                if report["field"] == self.plan.field:
                    report["rows"] = len(self.plan.rows)
                    report["unread_rows"] = unread
                    report["complete"] = report["complete"] and unread == 0
        return reports

    def _concerned(self, errors: list[str], merged: Merged) -> list[int]:
        """The pieces the merged record's validation errors point at. A whole-record error: by
        rows, the header pieces (the rows were checked complete); by size, every chunk that gave
        a value. A field outside the lists, by rows: the header pieces only (none: nothing)."""
        chunks: set[int] = set()
        headers = [j.index for j in self.jobs if j.role == "header"]
        everyone = [c for cs in merged.sources.values() for c in cs]
        for error in errors:
            match = _PATH.match(error)
            if match is None:  # the record as a whole ("$: items do not add up")
                chunks.update(headers or everyone)
                continue
            key = match.group(1) + (match.group(2) or "")
            found = [c for path, cs in merged.sources.items() if path == key or path.startswith(key + "[")
                     for c in cs]
            if not found and match.group(1) not in self.lists and self.plan is not None:
                # by rows, only the header pieces read the fields outside the lists: with none (the
                # whole document is rows), no piece can give them and none is re-run for them
                chunks.update(headers)
                continue
            chunks.update(found or everyone)
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
        """Items no piece still running could change: anchored before the first unfinished
        piece that reads list items."""
        unfinished = [j.piece.start for j in self.jobs if j.index not in done and j.role != "header"]
        frontier = min(unfinished) if unfinished else len(self.document) + 1
        out = []
        merged = self.merge()
        for name, items in merged.items.items():
            sent = self.locked.setdefault(name, {})
            for item in items:
                if item.key is None or item.key in sent:
                    continue
                if unfinished and self._loose_piece(item.chunk):
                    continue  # a loose row's item is settled by the count once every row is read
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

    def _all_done(self) -> set[int]:
        return {j.index for j in self.jobs}

    def _more(self, merged: Merged, last_unread: int | None) -> bool:
        """Whether another pass is due. By rows: while rows are unread (or a header piece
        failed), for at least `passes - 1` and at most `MAX_RERUNS` more passes, and only while
        the last one read something. By size: the passes asked for, and one more for a list
        found short of what the document prints."""
        if self.plan is not None:
            unread = len(self._unread_rows(merged))
            headers_failed = bool(self.failed & {j.index for j in self.jobs if j.role == "header"})
            if not unread and not headers_failed:
                return False
            limit = max(self.options.passes - 1, MAX_RERUNS)
            progress = last_unread is None or unread < last_unread or headers_failed
            return self.passes_run - 1 < limit and progress
        if self.passes_run < self.options.passes:
            return True
        short = any(not report["complete"] for report in self._completeness(merged))
        return short and self.passes_run == self.options.passes

    async def _steps(self, stream: bool) -> AsyncIterator[dict[str, Any]]:
        done: set[int] = set()
        async for job in self._run_jobs(list(self.jobs), together=not stream):
            done.add(job.index)
            if stream:
                for name, item in self._final_items(done):
                    yield self._item_event(name, item)
        self.passes_run = 1
        last_unread: int | None = None
        while self._more(merged := self.merge(), last_unread):
            if self.plan is not None:
                last_unread = len(self._unread_rows(merged))
            self.passes_run += 1
            jobs = self._later_pass(self.passes_run)
            if not jobs:
                break
            async for _ in self._run_jobs(jobs, together=not stream):
                pass
            if stream:
                for name, item in self._final_items(self._all_done()):
                    yield self._item_event(name, item)
        extraction = await self._validated(self.merge())
        if stream:
            for name, item in self._final_items(self._all_done()):
                yield self._item_event(name, item)
            if not self.many:
                data = extraction.data_dict()
                for name in data:
                    if name not in self.lists:
                        yield {"event": "field", "field": name, "value": data[name]}
        yield {"event": "result", "extraction": extraction}

    async def _validated(self, merged: Merged) -> Extraction[Any]:
        """The merged record validated by the task; a failure re-runs the pieces concerned once,
        with the errors fed back, then raises `ExtractionFailed`."""
        for retry in (False, True):
            outcome = self._validate(merged)
            if not isinstance(outcome, Invalid):
                return self._extraction(outcome, merged)
            self.errors.append(outcome.errors)
            if retry or self.options.max_retries == 0:
                break
            concerned = set(self._concerned(outcome.errors, merged))
            if not concerned:  # no piece could mend it: a re-run would only cost its time
                break
            self.retried_chunks = sorted(concerned)
            jobs = [replace(j, pass_no=1, feedback=outcome.errors) for j in self.jobs if j.index in concerned]
            # the new reading replaces every earlier one of the piece; where it fails, the old one stays
            earlier = {key: self.records.pop(key) for key in list(self.records) if key[1] in concerned}
            async for _ in self._run_jobs(jobs, together=True):
                pass
            for key, record in earlier.items():
                if key[1] in self.failed:
                    self.records[key] = record
            merged = self.merge()
        failure = ExtractionFailed(f"{self.task.name}: the merged record of {len(self.jobs)} chunks is not valid: "
                                   f"{'; '.join(self.errors[-1])}", attempts=self.attempts, errors=self.errors)
        failure.partial = merged.data  # type: ignore[attr-defined]
        raise failure

    def _validate(self, merged: Merged) -> Valid[Any] | Invalid:
        if self.many:
            records = [r for r in merged.data.get(RECORDS) or [] if r is not None]
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
            "chunks": len(self.jobs),
            "plan": "rows" if self.plan is not None else "chunks",
            "chunk_tokens": self.budget.chunk_tokens,
            "passes": self.passes_run,
            "conflicts": merged.conflicts,
            "completeness": self._completeness(merged),
            "failed_chunks": sorted(set(self.failed_chunks)),
            "retried_chunks": self.retried_chunks,
            "regrown_chunks": sorted(set(self.regrown)),
        }
        if self.plan is not None:
            long["rows"] = len(self.plan.rows)
            long["rerun_rows"] = self.rerun_rows
            long["loose_rows"] = sum(not r.firm for r in self.plan.rows)
            long["loose_left_out"] = self.loose_left_out
        meta = Meta(schema=self.task.name, version=self.task.version, engine=self.engine.name,
                    model=self.engine.model, attempts=self.attempts, errors=self.errors,
                    prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                    latency_ms=(time.perf_counter() - self.started) * 1000, spans=spans, long=long)
        return Extraction(data=outcome.value, meta=meta)


__all__ = ["LongRun", "extract_document", "needs_chunks", "prompt_tokens", "stream_document"]
