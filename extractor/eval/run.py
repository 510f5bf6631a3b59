"""Running an evaluation: a labeled data set through an `Extractor`, outcomes per document.

A data set is JSONL, one labeled document a line: `{"id", "text", "expected"}`, where `expected` is
the record the document should give. A label may be partial: a top-level field it leaves out is
unlabeled (not scored), and an explicit `null` says the document does not give the field, even for a
field the schema requires. `read_dataset` checks each `expected` against the task (the same gates as
a model output: strict JSON schema, then the Pydantic model with its validators, on the fields the
label gives a value), so a label error is reported before any document is run. `evaluate` / `aevaluate` send the documents
through the Extractor's concurrent path (`aiter_many`: bounded concurrency, the engine batches them,
per-document errors as values) with a progress bar on stderr, and time the whole run. Scoring is
`eval_metrics`; the report is `eval_report`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extractor.contracts.contract import Task
from extractor.errors import DocumentError, ExtractionFailed
from extractor.pipeline.extractor import Extractor
from extractor.pipeline.many import Document, ItemResult
from extractor.pipeline.options import DEFAULT_CONCURRENCY
from extractor.pipeline.validate import label_errors

__all__ = ["DocumentOutcome", "EvalRun", "LabeledDocument", "aevaluate", "evaluate", "label_errors", "read_dataset"]


@dataclass(frozen=True)
class LabeledDocument:
    id: str
    text: str
    expected: dict[str, Any]


@dataclass(frozen=True)
class DocumentOutcome:
    """What the extractor gave for one labeled document: `predicted` (the validated record as
    JSON), or `error` (`{"type", "message"}`) when no valid output came."""

    id: str
    expected: dict[str, Any]
    predicted: dict[str, Any] | None
    error: dict[str, str] | None
    attempts: int
    latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: the document (for the copied-from-example check of the report)
    text: str = ""

    @property
    def valid(self) -> bool:
        return self.predicted is not None


@dataclass(frozen=True)
class EvalRun:
    task: Task[Any]
    engine: str
    model: str
    dataset: str
    outcomes: list[DocumentOutcome]
    seconds: float
    max_retries: int
    #: values that occur nowhere in the document were refused and retried (`Extractor(require_grounded=True)`)
    require_grounded: bool = False
    #: strings and numbers decoded only as values that occur in the document (`grounded_decoding=True`)
    grounded_decoding: bool = False


def read_dataset(path: str | Path, task: Task[Any], *, limit: int | None = None) -> list[LabeledDocument]:
    """The labeled documents of a JSONL file (the first `limit` of them). Raises `DocumentError` for
    an unreadable file, a malformed line, a duplicate id or an `expected` the task does not accept."""
    p = Path(path)
    try:
        # lines end at \n only (and \r\n): U+2028, U+2029 and U+0085 are valid inside JSON strings
        lines = p.read_bytes().decode("utf-8").split("\n")
    except OSError as exc:
        raise DocumentError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{p}: not UTF-8 text (byte {exc.start})") from exc
    docs: list[LabeledDocument] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if limit is not None and len(docs) >= limit:
            break
        where = f"{p}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"{where}: not a JSON line: {exc.msg}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("expected"), dict):
            raise DocumentError(f"{where}: expected an object with a string 'text' and an object 'expected'")
        ident = str(row["id"]) if row.get("id") not in (None, "") else str(n)
        if ident in seen:
            raise DocumentError(f"{where}: duplicate id {ident!r}")
        seen.add(ident)
        problems = label_errors(task, row["expected"], row["text"])
        if problems:
            raise DocumentError(f"{where}: 'expected' is not a valid {task.name} record: {'; '.join(problems)}")
        docs.append(LabeledDocument(ident, row["text"], row["expected"]))
    if not docs:
        raise DocumentError(f"{p}: no labeled documents")
    return docs


def _outcome(doc: LabeledDocument, item: ItemResult) -> DocumentOutcome:
    if item.extraction is not None:
        meta = item.extraction.meta
        return DocumentOutcome(doc.id, doc.expected, item.extraction.data_dict(), None, meta.attempts,
                               round(meta.latency_ms, 1), meta.prompt_tokens, meta.completion_tokens, doc.text)
    error = item.error
    assert error is not None  # an ItemResult holds an extraction or an error
    attempts = error.attempts if isinstance(error, ExtractionFailed) else 0
    return DocumentOutcome(doc.id, doc.expected, None, {"type": error.code, "message": str(error)}, attempts,
                           text=doc.text)


async def aevaluate(extractor: Extractor, task: Task[Any], docs: Sequence[LabeledDocument], *, dataset: str = "",
                    concurrency: int = DEFAULT_CONCURRENCY, progress: bool = False) -> EvalRun:
    """Extract every document (at most `concurrency` in flight) and collect the outcomes in input
    order. An `EngineError` stops the run (it raises); a document's own failure is an outcome."""
    by_id = {d.id: d for d in docs}
    outcomes: list[DocumentOutcome] = []
    start = time.perf_counter()
    async for item in extractor.aiter_many(task, [Document(d.id, d.text) for d in docs], concurrency=concurrency,
                                           ordered=True, progress=progress, total=len(docs)):
        outcomes.append(_outcome(by_id[item.id], item))
    seconds = time.perf_counter() - start
    return EvalRun(task=task, engine=extractor.engine.name, model=extractor.engine.model, dataset=dataset,
                   outcomes=outcomes, seconds=seconds, max_retries=extractor.options.max_retries,
                   require_grounded=extractor.options.require_grounded,
                   grounded_decoding=extractor.options.grounded_for(task))


def evaluate(extractor: Extractor, task: Task[Any], docs: Sequence[LabeledDocument], *, dataset: str = "",
             concurrency: int = DEFAULT_CONCURRENCY, progress: bool = False) -> EvalRun:
    """`aevaluate` from sync code (not inside a running event loop)."""
    return asyncio.run(aevaluate(extractor, task, docs, dataset=dataset, concurrency=concurrency, progress=progress))
