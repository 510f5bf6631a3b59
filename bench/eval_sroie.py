"""Real receipts: mean exact match of company, date, address and total on sroie-dev (issue 13).

    python bench/eval_sroie.py --limit 60                 -> bench/results/eval_sroie_local.json and .png
    python bench/eval_sroie.py --engine vllm --engine-option model=$SMOLLM2_DIR
                                                          -> bench/results/eval_sroie_vllm.json and .png

The receipt contract with its defaults (grounded decoding, the ranked candidates of
`schemas/receipt_candidates.py` for company, address, date and total) on the OCR text of the 300
real receipts of `sroie-dev.jsonl` (read from `../shared/data/`, or `--data`). Its labels give those
four fields only: `items` is unlabeled and not scored (partial labels). Scoring is `extract eval`'s:
exact match per field after collapsing whitespace and case, as SROIE scores it; `mean_exact_match` is
the mean of the four fields' exact match. `--modes` also runs, for comparison, `spans` (grounded
decoding offering every span of the document, the receipt contract before candidates) and `top1`
(only the first candidate of each field: the rules alone, the model choosing nothing). The JSON keeps
per mode the run's figures and each field's exact match, invented and copied-from-example counts;
full reports (every receipt's expected and predicted record) go to `<out>/eval_sroie_<engine>/`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extractor import Extractor, default_registry  # noqa: E402
from extractor.contracts.contract import Task  # noqa: E402
from extractor.engines import engine_names, parse_options  # noqa: E402
from extractor.eval.report import build_report, write_report  # noqa: E402
from extractor.eval.run import aevaluate, read_dataset  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FIELDS = ("company", "date", "address", "total")
MODES = ("candidates", "spans", "top1")


from bench.shared_data import shared_data  # noqa: E402


def default_data() -> Path:
    return shared_data("sroie-dev.jsonl")


def _first_only(task: Task[Any]) -> Task[Any]:
    rules = task.field_candidates
    assert rules is not None

    def first(document: str) -> Mapping[str, Sequence[str]]:
        return {field: list(values)[:1] for field, values in rules(document).items()}

    return dataclasses.replace(task, field_candidates=first)


def task_for(mode: str) -> Task[Any]:
    task = default_registry().get("receipt")
    if mode == "spans":
        return dataclasses.replace(task, field_candidates=None)
    if mode == "top1":
        return _first_only(task)
    return task


def figures(report: dict[str, Any]) -> dict[str, Any]:
    fields = {f: {k: report["fields"][f][k] for k in ("exact_match", "docs", "absent", "invented", "copied")}
              for f in FIELDS}
    return {"documents": report["documents"], "valid": report["valid"], "seconds": report["seconds"],
            "docs_per_s": report["docs_per_s"], "attempts": report["attempts"],
            "grounded_decoding": report["grounded_decoding"],
            "mean_exact_match": round(sum(fields[f]["exact_match"] for f in FIELDS) / len(FIELDS), 4),
            "copied": sum(report["fields"][f]["copied"] for f in report["fields"]),
            "fields": fields}


async def run_all(extractor: Extractor, data: Path, modes: list[str], limit: int | None, concurrency: int,
                  out_dir: Path, result: dict[str, Any], save: Any) -> None:
    for mode in modes:
        task = task_for(mode)
        docs = read_dataset(data, task, limit=limit)
        print(f"sroie: {mode}, {len(docs)} receipts", file=sys.stderr)
        run = await aevaluate(extractor, task, docs, dataset=str(data.name), concurrency=concurrency, progress=True)
        report = build_report(run)
        write_report(report, out_dir / f"{mode}.json")
        result["modes"][mode] = figures(report)
        save()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(result["modes"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(modes))
    labels = [*FIELDS, "mean"]
    for k, mode in enumerate(modes):
        r = result["modes"][mode]
        ys = [r["fields"][f]["exact_match"] for f in FIELDS] + [r["mean_exact_match"]]
        xs = [i + k * width for i in range(len(labels))]
        ax.bar(xs, ys, width, label=f"{mode} (n={r['documents']})")
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y + 0.01, f"{y:.2f}", ha="center", fontsize=7)
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(labels))], labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("exact match")
    ax.legend(fontsize=8)
    ax.set_title(f"sroie-dev receipts: engine {result['engine']}, {result['model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="local", choices=engine_names())
    parser.add_argument("--engine-option", action="append", metavar="KEY=VALUE", default=[])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--modes", nargs="+", default=["candidates"], choices=MODES)
    parser.add_argument("--limit", type=int, help="only the first N receipts")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    name = f"eval_sroie_{args.engine}"
    extractor = Extractor(args.engine, **parse_options(args.engine_option))
    path = args.out / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    result: dict[str, Any] = {
        "benchmark": "eval_sroie", "engine": args.engine, "model": extractor.engine.model,
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": dt.date.today().isoformat(), "data": args.data.name, "limit": args.limit,
        "max_retries": extractor.options.max_retries,
        "modes": old.get("modes", {}) if old.get("limit") == args.limit else {},
    }

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        plot(result, path.with_suffix(".png"))

    try:
        asyncio.run(run_all(extractor, args.data, args.modes, args.limit, args.concurrency, args.out / name,
                            result, save))
    finally:
        extractor.close()
    for mode, r in result["modes"].items():
        fields = ", ".join(f"{f} {r['fields'][f]['exact_match']:.3f}" for f in FIELDS)
        print(f"{mode}: mean exact match {r['mean_exact_match']:.3f} on {r['documents']} receipts "
              f"({r['valid']} valid, {r['docs_per_s']} docs/s); {fields}; copied {r['copied']}")


if __name__ == "__main__":
    main()
