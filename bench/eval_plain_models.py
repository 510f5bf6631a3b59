"""Plain Pydantic models, as a new user writes them, with and without the candidates their
property names give (`extractor/grounding/field_kinds.py`, issue 13).

    python bench/eval_plain_models.py [--receipts 30] [--engine vllm --engine-option model=DIR]
        -> bench/results/eval_plain_models_<engine>.json and .png

Two plain models (`BaseModel`, not contracts: no instructions, examples or rules of their own),
on documents nobody wrote for these rules:
    Person   name, age, city, email (each `| None`) on `fixtures/dev/person_styles.jsonl` and
             `person_heldout.jsonl` (76 hand-written texts about people)
    Receipt  company, date, address, total (each `str | None`) on the first `--receipts` of
             `../shared/data/sroie-dev.jsonl` (real OCR'd receipts; only `company` has a kind; slow on
             a CPU: the free-text fields run long)
Variants, each on the same documents and engine, default options otherwise:
    names  as shipped: the fields whose names say what they hold take only their candidates
    plain  as before: `grounded_decoding=False`, every field free text
Also the company rules alone (no model) on all 300 receipts: how often the label is among
their candidates, and first. Reports per model and variant the share of labeled fields exactly right, per field, and the
invented rate (a value where the label is null). Per-document reports go to
`bench/results/eval_plain_models/` (git-ignored).
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

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.eval_person_examples import figures  # noqa: E402
from bench.shared_data import shared_data  # noqa: E402
from extractor import Extractor, task_from_model  # noqa: E402
from extractor.engines import engine_names, parse_options  # noqa: E402
from extractor.eval.report import build_report, write_report  # noqa: E402
from extractor.eval.run import aevaluate, read_dataset  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEV = ROOT / "fixtures" / "dev"
SROIE = Path(os.environ.get("SROIE_DEV", shared_data("sroie-dev.jsonl")))


class Person(BaseModel):
    name: str | None
    age: int | None
    city: str | None
    email: str | None


class Receipt(BaseModel):
    company: str | None
    date: str | None
    address: str | None
    total: str | None


def _sets(receipts: int) -> list[tuple[str, type[BaseModel], Path, int | None]]:
    sets: list[tuple[str, type[BaseModel], Path, int | None]] = [
        ("person_styles", Person, DEV / "person_styles.jsonl", None),
        ("person_heldout", Person, DEV / "person_heldout.jsonl", None)]
    return [*sets, ("sroie", Receipt, SROIE, receipts)] if receipts > 0 else sets


def company_rules_on_receipts(path: Path) -> dict[str, Any]:
    """The company rules alone on every receipt (no model): how often the label is among the
    candidates, and first."""
    from extractor.grounding.field_kinds import company_candidates

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    found = [[v for v in company_candidates(r["text"]) if v] for r in rows]
    pairs = list(zip(rows, found, strict=True))
    return {"receipts": len(rows), "label_among_candidates": sum(r["expected"]["company"] in f for r, f in pairs),
            "label_first": sum(bool(f) and f[0] == r["expected"]["company"] for r, f in pairs),
            "none_found": sum(not f for f in found)}


async def run_all(args: argparse.Namespace, result: dict[str, Any], save: Any) -> None:
    for variant in args.variants:
        extractor = Extractor(args.engine, **({"grounded_decoding": False} if variant == "plain" else {}),
                              **parse_options(args.engine_option))
        result["model"] = extractor.engine.model
        try:
            for name, model, path, limit in _sets(args.receipts):
                task = task_from_model(model)
                docs = read_dataset(path, task, limit=limit)
                print(f"plain {model.__name__} {variant} on {name}: {len(docs)} documents", file=sys.stderr)
                run = await aevaluate(extractor, task, docs, dataset=str(path.name), progress=True)
                report = build_report(run)
                write_report(report, args.out / "eval_plain_models" / f"{variant}_{name}.json")
                result["runs"].setdefault(variant, {})[name] = figures(report)
                save()
        finally:
            await extractor.aclose()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(result["runs"])
    sets = sorted({s for v in variants for s in result["runs"][v]})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / max(1, len(variants))
    for ax, key, title in zip(axes, ("fields_right", "invented_rate"),
                              ("fields exactly right", "invented / labeled nulls"), strict=True):
        for k, variant in enumerate(variants):
            xs = [i + k * width for i in range(len(sets))]
            ys = [result["runs"][variant].get(s, {}).get(key) or 0 for s in sets]
            ax.bar(xs, ys, width, label=variant)
            for x, y in zip(xs, ys, strict=True):
                ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(sets))], sets)
        ax.set_title(title, fontsize=10)
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"plain models: engine {result['engine']}, {result['model']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="local", choices=engine_names())
    parser.add_argument("--engine-option", action="append", metavar="KEY=VALUE", default=[])
    parser.add_argument("--variants", nargs="+", default=["names", "plain"], choices=["names", "plain"])
    parser.add_argument("--receipts", type=int, default=30, help="the first N receipts of sroie-dev (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = args.out / f"eval_plain_models_{args.engine}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    result: dict[str, Any] = {
        "benchmark": "plain_models", "engine": args.engine, "model": None,
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": dt.date.today().isoformat(), "receipts": args.receipts,
        # the runs of an earlier call on this engine stay (one variant or set at a time on a slow box)
        "runs": old.get("runs", {}) if old.get("engine") == args.engine else {},
    }

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        plot(result, path.with_suffix(".png"))

    if SROIE.exists():
        result["receipt_company_rules"] = company_rules_on_receipts(SROIE)
    asyncio.run(run_all(args, result, save))
    for variant, by_set in result["runs"].items():
        for s, f in by_set.items():
            print(f"{variant:6} {s:15} right {f['fields_right']} invented {f['invented']}/{f['absent']} "
                  f"valid {f['valid']}/{f['documents']} {f['seconds']:.0f}s")


if __name__ == "__main__":
    main()
