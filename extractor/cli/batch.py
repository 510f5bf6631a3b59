"""`extract batch SCHEMA INPUT -o OUTPUT`: a resumable batch from the command line.

INPUT is JSONL (`{"id", "text"}`), a folder of text files, or CSV/Parquet with
a text column. OUTPUT is JSONL, one line per document: `id` and `data` +
`meta`, or `id` and `error`. A rerun skips the ids already in OUTPUT (with
`--retry-failed`, only those that succeeded: the failed ones run again). A
summary goes to stderr at the end (and as JSON with `--summary-json`).

Memory stays constant whatever the input's size: the input is streamed (read
twice: once to count what is left to do, once to run it), and the ids already
in OUTPUT are kept as 8-byte hashes, the file itself streamed, never read whole.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from extractor.batch.jsonl import ResultsFile, read_documents
from extractor.cli.common import EXIT_ENGINE, EXIT_FAILED, EXIT_OK, load_registry, open_extractor, run_then_close
from extractor.cli.flags import add_engine_flags, add_option_flags
from extractor.errors import EngineError
from extractor.pipeline.many import Document, ItemResult, run_many


def add_parser(sub: Any, engine_names: list[str]) -> None:
    p = sub.add_parser("batch", help="extract from many documents into a resumable JSONL file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("schema", help="a registered schema name or a JSON Schema file")
    p.add_argument("input", help="JSONL file, folder of .txt/.md files, .csv or .parquet")
    p.add_argument("-o", "--output", required=True, help="JSONL results (appended to; ids in it are skipped)")
    add_engine_flags(p, engine_names)
    add_option_flags(p)
    p.add_argument("--ordered", action="store_true", help="write results in input order (default: as completed)")
    p.add_argument("--text-field", default="text", help="the text field or column (default text)")
    p.add_argument("--id-field", default="id", help="the id field or column (default id)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--retry-failed", action="store_true",
                   help="run the ids whose line in OUTPUT is an error again (their error lines are dropped)")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    task = load_registry(args).get(args.schema)
    results = ResultsFile(args.output, retry_failed=args.retry_failed)

    def todo() -> Iterator[Document]:  # streamed: the ids already done are skipped (a crash's rerun)
        for d in read_documents(args.input, text_field=args.text_field, id_field=args.id_field):
            if d.id not in results.done:
                yield d

    total = sum(1 for _ in todo())  # a first streamed pass: the count, and any unreadable input said now
    skipped = len(results.done)
    if not total:
        print(f"extract: nothing to do: all {skipped} ids of {args.input} are in {args.output}", file=sys.stderr)
        results.close()
        _write_summary(args, {"ok": 0, "failed": 0, "retried": 0, "total": 0, "seconds": 0.0, "first_result_s": 0.0,
                              "docs_per_s": None, "output": args.output, "skipped": skipped,
                              "retried_failed": results.counts["dropped_failed"]})
        return EXIT_OK
    extractor = open_extractor(args)
    try:
        summary = asyncio.run(run_then_close(extractor, _run(extractor, task, todo(), total, results, args)))
    except EngineError as exc:
        print(f"extract: engine {extractor.engine.name} failed: {exc} (finished results are kept in "
              f"{args.output}; rerun to resume)", file=sys.stderr)
        return EXIT_ENGINE
    finally:
        results.close()
    summary["skipped"] = skipped
    summary["retried_failed"] = results.counts["dropped_failed"]
    print("extract: {ok} ok, {failed} failed, {retried} retried, {skipped} already done; "
          "{docs_per_s} docs/s over {seconds} s".format(**summary), file=sys.stderr)
    _write_summary(args, summary)
    return EXIT_OK if summary["failed"] == 0 else EXIT_FAILED


def _write_summary(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


async def _run(extractor: Any, task: Any, todo: Iterator[Document], total: int, results: ResultsFile,
               args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    async def run(text: str) -> Any:
        return await extractor.arun(task, text)

    async def docs() -> AsyncIterator[Document]:
        for d in todo:
            yield d

    counts = {"ok": 0, "failed": 0, "retried": 0}
    bar = tqdm(total=total, unit="doc", file=sys.stderr, disable=args.no_progress, smoothing=0.1)
    start = time.perf_counter()
    item: ItemResult
    first: float | None = None
    async for item in run_many(run, docs(), concurrency=args.concurrency, ordered=args.ordered):
        results.write(item.to_dict())
        if first is None:
            first = time.perf_counter() - start
        if item.extraction is not None:
            counts["ok"] += 1
            counts["retried"] += item.extraction.meta.attempts > 1
        else:
            counts["failed"] += 1
        bar.update(1)
    elapsed = time.perf_counter() - start
    bar.close()
    done = counts["ok"] + counts["failed"]
    return {**counts, "total": done, "seconds": round(elapsed, 2), "first_result_s": round(first or 0.0, 2),
            "docs_per_s": round(done / elapsed, 1) if elapsed > 0 else None, "output": args.output}
