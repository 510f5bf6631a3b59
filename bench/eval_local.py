"""F1 per field on the dev sets (fixtures/dev/) of every shipped schema, for one engine.

    python bench/eval_local.py                      -> bench/results/eval_local.json and eval_local.png
    python bench/eval_local.py --engine vllm-http --engine-option base_url=http://gpu:8000/v1
                                                    -> bench/results/eval_vllm-http.json and .png

The engine is loaded once and the four data sets run one after the other through `extract eval`'s
code (extractor/eval_run.py, eval_report.py), in one event loop. The summary JSON holds, per schema,
the run's figures and each field's precision, recall, F1 and exact match (rewritten after each schema,
so `--schemas receipt` reruns one set and keeps the others' figures); the full reports (every
document's expected and predicted record) go to bench/results/eval_<engine>/<schema>.json with an
HTML page each, ready for `extract eval --compare`. The PNG plots F1 per field, one panel a schema.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extractor import Extractor, default_registry  # noqa: E402
from extractor.engines import engine_names, parse_options  # noqa: E402
from extractor.eval.report import build_report, write_report  # noqa: E402
from extractor.eval.run import aevaluate, read_dataset  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEV = ROOT / "fixtures" / "dev"
SCHEMAS = ["person", "invoice", "receipt", "job_posting"]


async def run_all(extractor: Extractor, schemas: list[str], limit: int | None, concurrency: int,
                  out_dir: Path, after_each: Any) -> dict[str, dict[str, Any]]:
    registry = default_registry()
    reports = {}
    for schema in schemas:
        task = registry.get(schema)
        docs = read_dataset(DEV / f"{schema}.jsonl", task, limit=limit)
        print(f"eval: {schema}, {len(docs)} documents", file=sys.stderr)
        run = await aevaluate(extractor, task, docs, dataset=f"fixtures/dev/{schema}.jsonl", concurrency=concurrency,
                              progress=True)
        report = build_report(run)
        write_report(report, out_dir / f"{schema}.json")
        reports[schema] = report
        after_each()
    return reports


def write_summary(out: Path, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """`out/name.json` and `.png` from every schema's full report in `out/name/` (a run of some
    schemas only updates theirs and keeps the others': from their full reports where this checkout
    has them, else from the summary already written, since the full reports are not committed)."""
    reports = {s: json.loads(p.read_text()) for s in SCHEMAS if (p := out / name / f"{s}.json").exists()}
    summary_path = out / f"{name}.json"
    kept = json.loads(summary_path.read_text()).get("schemas", {}) if summary_path.exists() else {}
    fresh = {schema: {"date": r["date"], **summarize(r)} for schema, r in reports.items()}
    result = {**meta, "schemas": {s: fresh.get(s) or kept[s] for s in SCHEMAS if s in fresh or s in kept}}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    if result["schemas"]:
        plot(result, out / f"{name}.png")
    return result


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("max_retries", "require_grounded", "grounded_decoding",
            "documents", "valid", "validity_rate", "attempts", "seconds", "docs_per_s",
            "tokens", "summary", "top_level_fields")
    return {**{k: report.get(k) for k in keep},
            "fields": {path: {m: s[m] for m in ("f1", "precision", "recall", "exact_match", "support")}
                       for path, s in report["fields"].items()}}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemas = list(result["schemas"])
    fig, axes = plt.subplots(1, len(schemas), figsize=(4.2 * len(schemas), 4.6), squeeze=False)
    for ax, schema in zip(axes[0], schemas, strict=True):
        r = result["schemas"][schema]
        fields = list(r["fields"])[::-1]
        top = set(r["top_level_fields"])
        f1 = [r["fields"][f]["f1"] for f in fields]
        ax.barh(fields, f1, color=["#4c72b0" if f in top else "#9fb4d9" for f in fields])
        for y, value in enumerate(f1):
            ax.text(min(value + 0.02, 0.86), y, f"{value:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("F1")
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(f"{schema} (n={r['documents']})\nmacro F1 {r['summary']['macro_f1']:.2f}, "
                     f"valid {r['validity_rate']:.2f}, max retries {r['max_retries']}", fontsize=10)
    fig.suptitle(f"F1 per field on the dev sets: engine {result['engine']}, {result['model']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="local", choices=engine_names())
    parser.add_argument("--engine-option", action="append", metavar="KEY=VALUE", default=[])
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--require-grounded", action="store_true", help="refuse and retry values found nowhere (-> *_grounded)")
    parser.add_argument("--grounded-decoding", action=argparse.BooleanOptionalAction, default=None,
                        help="decode strings and numbers only as values that occur in the document (-> *_gdec), or "
                             "never (--no-grounded-decoding -> *_plain); default: each contract's own default")
    parser.add_argument("--schemas", nargs="+", default=SCHEMAS, choices=SCHEMAS)
    parser.add_argument("--limit", type=int, help="only the first N documents of each set")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    name = (f"eval_{args.engine}" + ("_grounded" if args.require_grounded else "")
            + {None: "", True: "_gdec", False: "_plain"}[args.grounded_decoding])
    extractor = Extractor(args.engine, max_retries=args.max_retries, require_grounded=args.require_grounded,
                          grounded_decoding=args.grounded_decoding,
                          **parse_options(args.engine_option))
    meta = {
        "benchmark": "eval_dev_sets", "engine": args.engine, "model": extractor.engine.model,
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": dt.date.today().isoformat(),  # of this invocation; each schema has its own date and settings
    }
    try:
        asyncio.run(run_all(extractor, args.schemas, args.limit, args.concurrency, args.out / name,
                            after_each=lambda: write_summary(args.out, name, meta)))
    finally:
        close = getattr(extractor.engine, "close", None)
        if callable(close):
            close()
    result = write_summary(args.out, name, meta)
    for schema, r in result["schemas"].items():
        fields = ", ".join(f"{f} {r['fields'][f]['f1']:.2f}" for f in r["top_level_fields"])
        print(f"{schema}: valid {r['validity_rate']:.2f}, macro F1 {r['summary']['macro_f1']:.3f}, "
              f"{r['docs_per_s']} docs/s; {fields}")


if __name__ == "__main__":
    main()
