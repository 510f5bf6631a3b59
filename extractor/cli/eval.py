"""`extract eval SCHEMA DATASET.jsonl -o report.json`: how right the extractions are, per field.

DATASET is JSONL, one labeled document a line: {"id", "text", "expected"}; a
field left out of `expected` is unlabeled (not scored), an explicit null means
"not in the document". Every document is extracted (concurrently; a progress
bar on stderr), each field is scored against `expected` after normalisation by
its type (strings: case and whitespace; numbers: --abs-tol/--rel-tol; dates:
ISO; lists: as sets, item by item), and the report (per-field precision,
recall, F1 and exact match, invented values (predicted where the label is
null), values copied from a few-shot example, validity rate, attempts, docs/s)
is written as JSON plus an HTML summary next
to it (report.html). A table of the top-level fields goes to stdout.

`extract eval --compare A.json B.json [-o deltas.json]` prints the per-field
deltas (B - A) of two reports: an A/B of prompts, models or engines.

With `--adapter DIR` the schema is extracted with its LoRA adapter. Documents the adapter was
trained on (by id or by text, from its manifest) are never scored: they are left out, with a
warning, and counted in the report (`adapter.excluded_trained_on`). `--ab` also runs the base
model on the same documents with the same engine, and the report holds both (`base`, and `ab`:
the per-field deltas adapter - base).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from extractor.cli.common import EXIT_ENGINE, EXIT_OK, EXIT_USAGE, load_registry, open_extractor, run_then_close
from extractor.cli.flags import add_engine_flags, add_option_flags


def add_parser(sub: Any, engine_names: list[str]) -> None:
    p = sub.add_parser("eval", help="score extractions against a labeled data set, per field",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("schema", nargs="?", help="a registered schema name or a JSON Schema file")
    p.add_argument("dataset", nargs="?", help="JSONL of {id, text, expected}")
    p.add_argument("-o", "--output", help="the JSON report (an HTML summary is written next to it); "
                                          "with --compare, the deltas as JSON")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print per-field deltas B - A of two reports")
    add_engine_flags(p, engine_names)
    add_option_flags(p)
    p.add_argument("--ab", action="store_true", help="with --adapter: also the base model on the same documents, "
                                                     "both in one report")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N documents")
    p.add_argument("--abs-tol", type=float, default=0.005, help="numbers equal within this absolute difference (0.005)")
    p.add_argument("--rel-tol", type=float, default=0.0, help="... or within this share of the larger one (0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def _usage(message: str) -> int:
    print(f"extract: eval: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_eval(args: argparse.Namespace) -> int:
    if args.compare:
        if args.schema or args.dataset:
            return _usage("--compare takes two reports and no SCHEMA or DATASET")
        return _compare(args.compare[0], args.compare[1], args.output)
    if not (args.schema and args.dataset):
        return _usage("usage: extract eval SCHEMA DATASET.jsonl -o report.json, or extract eval --compare A.json B.json")
    if not args.output:
        return _usage("-o/--output REPORT.json is required")
    if args.limit is not None and args.limit < 1:
        return _usage("--limit must be at least 1")
    if args.concurrency < 1:
        return _usage("--concurrency must be at least 1")
    if args.ab and not args.adapter:
        return _usage("--ab compares an adapter with the base model: give --adapter DIR")
    return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from extractor.adapters.registry import AdapterRegistry
    from extractor.errors import EngineError
    from extractor.eval.metrics import Tolerance
    from extractor.eval.report import build_report, compare_reports, format_comparison, write_report
    from extractor.eval.run import aevaluate, read_dataset

    registry = load_registry(args)
    task = registry.get(args.schema)
    docs = read_dataset(args.dataset, task, limit=args.limit)
    adapter = AdapterRegistry.load(args.adapter).get(task.name) if args.adapter else None
    if args.adapter and adapter is None:
        return _usage(f"no --adapter is for schema {task.name!r}")
    excluded: list[str] = []
    if adapter is not None:
        excluded = [d.id for d in docs if adapter.trained_on(d.id, d.text)]
        if excluded:
            print(f"extract: eval: {len(excluded)} document(s) the adapter was trained on left out: "
                  f"{', '.join(excluded[:8])}{' ...' if len(excluded) > 8 else ''}", file=sys.stderr)
            docs = [d for d in docs if d.id not in set(excluded)]
        if not docs:
            return _usage("every document was in the adapter's training split: nothing to evaluate")
    extractor = open_extractor(args, registry)
    tolerance = Tolerance(absolute=args.abs_tol, relative=args.rel_tol)

    async def runs() -> tuple[Any, Any]:
        from extractor.pipeline.extractor import Extractor

        kwargs = {"dataset": str(args.dataset), "concurrency": args.concurrency, "progress": not args.no_progress}
        base = None
        if args.ab:  # the same engine (and model), without the adapter
            base = await aevaluate(Extractor(extractor.engine, options=extractor.options, registry=registry), task,
                                   docs, **kwargs)
        return await aevaluate(extractor, task, docs, **kwargs), base

    try:
        run, base_run = asyncio.run(run_then_close(extractor, runs()))
    except EngineError as exc:
        print(f"extract: engine {extractor.engine.name} failed: {exc}", file=sys.stderr)
        return EXIT_ENGINE
    report = build_report(run, tolerance)
    if adapter is not None:
        report["adapter"] = {"name": adapter.name, "path": str(adapter.path), "excluded_trained_on": len(excluded),
                             "manifest": {k: v for k, v in adapter.manifest.model_dump(mode="json", by_alias=True).items()
                                          if k != "data"}}
    if base_run is not None:
        base_report = build_report(base_run, tolerance)
        report["base"] = base_report
        report["ab"] = compare_reports(base_report, report)
    json_path, html_path = write_report(report, args.output)
    if base_run is not None:
        print(format_comparison(report["ab"]))
    print(format_fields(report))
    print(f"extract: {report['valid']}/{report['documents']} valid, macro F1 {report['summary']['macro_f1']:.3f}, "
          f"{report['docs_per_s']} docs/s; wrote {json_path} and {html_path}", file=sys.stderr)
    return EXIT_OK


def format_fields(report: dict[str, Any]) -> str:
    """The top-level fields' figures and the run's, as a plain-text table."""
    top = report["top_level_fields"]
    width = max([len(p) for p in top] + [10])
    lines = [f"{'field':<{width}}  {'F1':>6}  {'P':>6}  {'R':>6}  {'exact':>6}  {'support':>7}  {'invented':>9}  {'copied':>6}"]
    for path in top:
        s = report["fields"][path]
        invented = f"{s.get('invented', 0)}/{s.get('absent', 0)}"
        lines.append(f"{path:<{width}}  {s['f1']:>6.3f}  {s['precision']:>6.3f}  {s['recall']:>6.3f}  "
                     f"{s['exact_match']:>6.3f}  {s['support']:>7}  {invented:>9}  {s.get('copied', 0):>6}")
    summary = report["summary"]
    lines.append(f"{'macro F1':<{width}}  {summary['macro_f1']:>6.3f}   fields right {summary.get('fields_right', 0):.3f}, "
                 f"invented {summary.get('invented', 0)}/{summary.get('absent', 0)}, copied {summary.get('copied', 0)}")
    lines.append(f"{'validity':<{width}}  {report['validity_rate']:>6.3f}   mean attempts {report['attempts']['mean']}")
    return "\n".join(lines)


def _compare(a_path: str, b_path: str, output: str | None) -> int:
    from extractor.eval.report import compare_reports, format_comparison, load_report

    cmp = compare_reports(load_report(a_path), load_report(b_path))
    print(format_comparison(cmp))
    if output:
        with open(output, "w", encoding="utf-8") as f:
            json.dump(cmp, f, indent=2)
            f.write("\n")
    return EXIT_OK
