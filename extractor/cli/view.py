"""`extract view RESULTS.jsonl [--docs INPUT] -o page.html`: one self-contained HTML page showing
each document with its extracted values highlighted by field (`extractor.view.html`).

RESULTS is the JSONL of `extract batch` (`{"id", "data", "meta"}` or `{"id", "error"}` lines) or
the output of `extract run`. The results do not carry the documents: their texts come from the
batch's input, given with `--docs` (the same JSONL, folder, CSV or Parquet file, read the same
way, matched by id), or from a `text` member of a result line. Highlights come from `meta.spans`
when the batch ran with `--spans`, else they are computed here from the text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from extractor.cli.common import EXIT_OK, EXIT_USAGE


def add_parser(sub: Any, engine_names: list[str]) -> None:
    p = sub.add_parser("view", help="write an HTML page of results, values highlighted in their documents",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results JSONL (of extract batch or extract run)")
    p.add_argument("--docs", metavar="INPUT", help="the batch's input (JSONL, folder, .csv or .parquet): texts by id")
    p.add_argument("--text-field", default="text", help="the text field or column of INPUT (default text)")
    p.add_argument("--id-field", default="id", help="the id field or column of INPUT (default id)")
    p.add_argument("-o", "--output", required=True, help="the HTML page to write (- for stdout)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many documents, the first (default 1000)")
    p.add_argument("--title", help="the page title (default: the results file name)")
    p.set_defaults(func=cmd_view)


def _result_lines(path: str, limit: int) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                print(f"extract: {path}:{n}: not a JSON line, skipped", file=sys.stderr)
                continue
            if isinstance(row, dict):
                yield n, row
                limit -= 1
                if limit <= 0:
                    return


def _ident(line_number: int, row: dict[str, Any]) -> str:
    """The result's id; for `extract run` output its `meta.file`, else its line number."""
    meta = row.get("meta")
    fallback = meta.get("file", line_number) if isinstance(meta, dict) else line_number
    return str(row.get("id", fallback))


def cmd_view(args: argparse.Namespace) -> int:
    from extractor.batch.jsonl import read_documents
    from extractor.view.html import item_from_result, render_page

    try:
        rows = list(_result_lines(args.results, max(1, args.limit)))
    except OSError as exc:
        print(f"extract: {args.results}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    ids = [_ident(n, row) for n, row in rows]
    texts: dict[str, str] = {}
    if args.docs:
        wanted = set(ids)
        for doc in read_documents(args.docs, text_field=args.text_field, id_field=args.id_field):
            if doc.id in wanted and doc.error is None:
                texts[doc.id] = doc.text
    items = [item_from_result(row, text=texts.get(ident), fallback_id=ident) for ident, (_, row) in zip(ids, rows, strict=True)]
    missing = sum(item.text is None for item in items)
    notice = f"{missing} of {len(items)} documents have no text: pass the batch input with --docs" if missing else None
    page = render_page(items, title=args.title or Path(args.results).name, notice=notice)
    if args.output == "-":
        sys.stdout.write(page)
    else:
        Path(args.output).write_text(page, encoding="utf-8")
        print(f"extract: wrote {args.output}: {len(items)} documents"
              + (f", {missing} without text" if missing else ""), file=sys.stderr)
    return EXIT_OK
