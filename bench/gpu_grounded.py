"""Grounded decoding against plain decoding on one engine: docs/s and F1 per field, side by side.

    python bench/gpu_grounded.py --model $SMOLLM2_DIR --out RESULTS_DIR            (a GPU, vLLM in-process)
    python bench/gpu_grounded.py --engine local --limit 4 --out /tmp/gg           (a CPU check of the script)

Two data sets, each extracted twice by the same `Extractor` (one engine, loaded once), plain then
grounded (`grounded_decoding=False` / `True`), each pass after a warm-up of its own:

  receipt  ../shared/data/sroie-dev.jsonl (300 real receipts), schema `receipt`
  person   the 2048 person records of bench/person_records.py, schema `person`

Per pass: docs/s, valid outputs, attempts, macro F1 and F1 per field (`extract eval`'s scoring), and
for the grounded pass how many documents got the full per-document constraint and how many fell back
(`meta.grounded_decoding`). The target of issue 15: grounded >= 0.8x plain docs/s on both sets.
Writes RESULTS_DIR/gpu_grounded.json (summaries only) and gpu_grounded.png.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.person_records import person_records  # noqa: E402
from bench.shared_data import shared_data  # noqa: E402
from extractor import Extractor, default_registry  # noqa: E402
from extractor.eval.report import build_report  # noqa: E402
from extractor.eval.run import DocumentOutcome, EvalRun, LabeledDocument, label_errors  # noqa: E402
from extractor.pipeline.many import Document  # noqa: E402

SROIE = shared_data("sroie-dev.jsonl")
SERVED = "SmolLM2-135M-Instruct"
WARM_UP = 16


def receipts(limit: int | None) -> list[LabeledDocument]:
    path = Path(os.environ.get("SROIE_DEV", SROIE))
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [LabeledDocument(str(r["id"]), r["text"], r["expected"]) for r in rows[:limit]]


def persons(limit: int | None) -> list[LabeledDocument]:
    return [LabeledDocument(r["id"], r["text"], {**r["expected"], "email": None}) for r in person_records(2048)][:limit]


async def one_pass(engine: Extractor, schema: str, docs: list[LabeledDocument], grounded: bool,
                   concurrency: int) -> dict[str, Any]:
    task = default_registry().get(schema)
    # the same engine, this pass's options
    extractor = Extractor(engine.engine, options=engine.options, grounded_decoding=grounded)
    warm = [Document(f"warm{i}", d.text) for i, d in enumerate(docs[:WARM_UP])]
    async for _ in extractor.aiter_many(task, warm, concurrency=concurrency):
        pass
    by_id = {d.id: d for d in docs}
    outcomes: list[DocumentOutcome] = []
    statuses: collections.Counter[str] = collections.Counter()
    start = time.perf_counter()
    async for item in extractor.aiter_many(task, [Document(d.id, d.text) for d in docs], concurrency=concurrency,
                                           ordered=True):
        doc = by_id[item.id]
        if item.extraction is not None:
            meta = item.extraction.meta
            statuses[meta.grounded_decoding or "plain"] += 1
            outcomes.append(DocumentOutcome(doc.id, doc.expected, item.extraction.data_dict(), None, meta.attempts,
                                            meta.latency_ms, meta.prompt_tokens, meta.completion_tokens))
        else:
            statuses["failed"] += 1
            outcomes.append(DocumentOutcome(doc.id, doc.expected, None, {"type": "failed", "message": str(item.error)},
                                            getattr(item.error, "attempts", 0)))
    seconds = time.perf_counter() - start
    run = EvalRun(task=task, engine=extractor.engine.name, model=extractor.engine.model, dataset=schema,
                  outcomes=outcomes, seconds=seconds, max_retries=extractor.options.max_retries,
                  grounded_decoding=grounded)
    report = build_report(run)
    return {"grounded_decoding": grounded, "documents": len(docs), "seconds": round(seconds, 2),
            "docs_per_s": round(len(docs) / seconds, 2), "valid": report["valid"], "attempts": report["attempts"],
            "macro_f1": report["summary"]["macro_f1"], "document_exact_match": report["summary"]["document_exact_match"],
            "f1": {path: round(s["f1"], 4) for path, s in report["fields"].items()},
            "status": dict(statuses)}


async def run(extractor: Extractor, sets: dict[str, list[LabeledDocument]], concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for schema, docs in sets.items():
        task = default_registry().get(schema)
        bad = [d.id for d in docs if label_errors(task, d.expected, d.text)]
        plain = await one_pass(extractor, schema, docs, False, concurrency)
        print(json.dumps({"set": schema, **{k: v for k, v in plain.items() if k != "f1"}}), flush=True)
        grounded = await one_pass(extractor, schema, docs, True, concurrency)
        print(json.dumps({"set": schema, **{k: v for k, v in grounded.items() if k != "f1"}}), flush=True)
        out[schema] = {"plain": plain, "grounded": grounded, "labels_refused": len(bad),
                       "ratio": round(grounded["docs_per_s"] / plain["docs_per_s"], 3)}
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["sets"])
    fig, axes = plt.subplots(1, 1 + len(sets), figsize=(4.5 * (1 + len(sets)), 4))
    speed = axes[0]
    xs = range(len(sets))
    speed.bar([x - 0.2 for x in xs], [result["sets"][s]["plain"]["docs_per_s"] for s in sets], 0.4, label="plain")
    speed.bar([x + 0.2 for x in xs], [result["sets"][s]["grounded"]["docs_per_s"] for s in sets], 0.4, label="grounded")
    for x, s in zip(xs, sets, strict=True):
        speed.text(x, result["sets"][s]["plain"]["docs_per_s"], f"{result['sets'][s]['ratio']:.2f}x", ha="center")
    speed.set_xticks(list(xs), sets)
    speed.set_ylabel("docs/s")
    speed.legend()
    speed.set_title("throughput (ratio: grounded / plain)")
    for ax, s in zip(axes[1:], sets, strict=True):
        fields = list(result["sets"][s]["plain"]["f1"])[::-1]
        ys = range(len(fields))
        ax.barh([y - 0.2 for y in ys], [result["sets"][s]["plain"]["f1"][f] for f in fields], 0.4, label="plain")
        ax.barh([y + 0.2 for y in ys], [result["sets"][s]["grounded"]["f1"][f] for f in fields], 0.4, label="grounded")
        ax.set_yticks(list(ys), fields, fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_title(f"{s}: F1 per field")
        ax.legend(fontsize=7)
    fig.suptitle(f"grounded vs plain decoding, engine {result['engine']} ({result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="vllm", help="vllm (default; needs --model) or local")
    parser.add_argument("--model", default=os.environ.get("SMOLLM2_DIR"), help="the model folder (vllm)")
    parser.add_argument("--sets", nargs="+", default=["receipt", "person"], choices=["receipt", "person"])
    parser.add_argument("--limit", type=int, help="only the first N documents of each set")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--max-retries", type=int, default=2, help="as users get it by default")
    parser.add_argument("--backend", choices=["xgrammar", "guidance"],
                        help="vLLM's structured-output backend (engine-wide; default: the engine's, xgrammar)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.engine == "vllm":
        if not args.model:
            parser.error("--model (or $SMOLLM2_DIR) is needed for vllm")
        backend = {"backend": args.backend} if args.backend else {}
        extractor = Extractor("vllm", model=args.model, served_model_name=SERVED, gpu_memory_utilization=0.5,
                              max_retries=args.max_retries, **backend)
    else:
        extractor = Extractor(args.engine, max_retries=args.max_retries)
    loaders = {"receipt": receipts, "person": persons}
    sets = {name: loaders[name](args.limit) for name in args.sets}
    try:
        device = "cpu"
        try:
            import torch

            device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{platform.machine()} cpu"
        except ImportError:
            pass
        result = {"benchmark": "gpu_grounded", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  "engine": extractor.engine.name, "model": extractor.engine.model, "device": device,
                  "max_retries": args.max_retries, "concurrency": args.concurrency, "warm_up": WARM_UP,
                  "sets": asyncio.run(run(extractor, sets, args.concurrency))}
    finally:
        extractor.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_grounded.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "gpu_grounded.png")
    print(f"wrote {args.out / 'gpu_grounded.json'}")


if __name__ == "__main__":
    main()
