"""LoRA adapters per schema on the GPU: train, evaluate against the base model, serve two at once.

    python bench/lora_train.py --model $SMOLLM2_DIR --out bench/results            # the H200 run (< 9 min)
    python bench/lora_train.py --engine local --tiny --out /tmp/lora-tiny           # a CPU smoke run

1. receipt: `../shared/data/sroie-dev.jsonl` (real OCR'd receipts). A seeded split holds 20 % out
   as the test part; the adapter trains on the rest (its own seeded 10 % early-stopping split
   inside). The task is the `receipt` contract; SROIE labels have no `items`, so the adapter learns
   `items: null` (the labels as a partial record; the 4 labeled fields are what is scored). Scored on
   the test part only (asserted disjoint from the manifest's training ids): exact match per field
   after collapsing whitespace and upper-casing, as the data's README says, for the base model
   without and with grounded decoding and for the adapter without and with it.
2. person, invoice, job_posting: adapters trained on synthetic documents from
   `fixtures/dev/make_dev_sets.py` run with ANOTHER seed (documents whose text is in the dev set are
   dropped), then the dev sets' macro F1 (`extractor.eval`) of the base model and of the adapter,
   each schema with its default grounded decoding.
3. serving: 256 documents in flight, person and invoice at once (128 each), every one with its
   schema's adapter, against the base model on a plain engine (no LoRA) and on the LoRA engine;
   docs/s and validity.

Writes `lora_receipt.json`, `lora_synthetic.json`, `lora_serving.json`, one PNG of training curves
per adapter (`lora_curves_<schema>.png`) and `lora_eval.png` under --out. The adapters go to
--adapters (default /tmp/lora-adapters): weights trained on SROIE are never committed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.shared_data import shared_data  # noqa: E402
from extractor import Extractor  # noqa: E402
from extractor.adapters.examples import read_training_set, split_documents, target_record  # noqa: E402
from extractor.adapters.train import TrainConfig, train_adapter  # noqa: E402
from extractor.contracts.registry import default_registry  # noqa: E402
from extractor.eval.report import build_report  # noqa: E402
from extractor.eval.run import LabeledDocument, aevaluate, read_dataset  # noqa: E402

SROIE = shared_data("sroie-dev.jsonl")
RECEIPT_FIELDS = ("company", "date", "address", "total")
SYNTHETIC = ("person", "invoice", "job_posting")
SERVED = "SmolLM2-135M-Instruct"
SPLIT_SEED = 14
#: make_dev_sets' seed is 20241207 (+ schema index); training documents come from another one
TRAIN_SEED = 777_000


def _dev_generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_dev_sets", ROOT / "fixtures" / "dev" / "make_dev_sets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_training_set(schema: str, n: int, task: Any) -> list[LabeledDocument]:
    """`n` documents from the dev generator with another seed, none whose text is a dev document's."""
    gen = _dev_generator()
    dev_texts = {row["text"] for row in gen.dev_set(schema)}
    gen.SEED, gen.COUNTS = TRAIN_SEED, {**gen.COUNTS, schema: n}
    rows = [r for r in gen.dev_set(schema) if r["text"] not in dev_texts]
    return [LabeledDocument(f"train-{r['id']}", r["text"], target_record(task, r["expected"])) for r in rows]


def norm(value: Any) -> str:
    return " ".join(str(value).split()).upper() if value is not None else ""


def receipt_scores(outcomes: Sequence[Any]) -> dict[str, Any]:
    per_field = {f: 0.0 for f in RECEIPT_FIELDS}
    for o in outcomes:
        for f in RECEIPT_FIELDS:
            if o.predicted is not None and norm(o.predicted.get(f)) == norm(o.expected.get(f)):
                per_field[f] += 1
    n = max(len(outcomes), 1)
    fields = {f: round(v / n, 4) for f, v in per_field.items()}
    return {"fields": fields, "mean_exact": round(sum(fields.values()) / len(fields), 4),
            "valid": sum(o.predicted is not None for o in outcomes), "documents": len(outcomes)}


def make_engine(kind: str, model: str | None, adapters: Sequence[Any]) -> Any:
    if kind == "local":
        from extractor.engines.local import LocalEngine

        return LocalEngine(model)
    from extractor.engines.vllm_inprocess import VllmEngine, lora_settings

    return VllmEngine(model, served_model_name=SERVED, gpu_memory_utilization=0.45, max_model_len=2048,
                      **lora_settings([a.ref for a in adapters]))


def free_gpu() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def train(task: Any, docs: Sequence[LabeledDocument], out: Path, config: TrainConfig, model: str | None,
          results: Path) -> dict[str, Any]:
    r = train_adapter(task, docs, out, config=config, base_model_dir=model, base_model_name=SERVED if model else None)
    if (out / "curves.png").exists():
        shutil.copy(out / "curves.png", results / f"lora_curves_{task.name}.png")
    free_gpu()
    return {"seconds": round(r.seconds, 1), "train": r.manifest.data.train, "validation": r.manifest.data.validation,
            "metrics": r.manifest.metrics, "hyperparameters": r.manifest.hyperparameters,
            "curves": {"step": r.curves.step, "train_loss": [round(x, 5) for x in r.curves.train_loss],
                       "val_step": r.curves.val_step, "val_loss": [round(x, 5) for x in r.curves.val_loss]}}


async def evaluate(engine: Any, task: Any, docs: Sequence[LabeledDocument], *, adapter: Any, grounded: bool | None,
                   max_retries: int, concurrency: int) -> Any:
    registry = default_registry()
    ex = Extractor(engine, registry=registry, adapter=adapter, max_retries=max_retries, grounded_decoding=grounded)
    return await aevaluate(ex, task, docs, concurrency=concurrency)


async def serving(engine: Any, tasks: dict[str, Any], docs: dict[str, list[str]], adapters: Any) -> dict[str, Any]:
    """Every schema's documents at once, `len(docs)` x 128 = 256 in flight, each with its adapter (or none)."""
    ex = Extractor(engine, adapter=adapters, max_retries=0)
    valid = total = 0

    async def stream(name: str, limit: int | None = None) -> None:
        nonlocal valid, total
        async for item in ex.aiter_many(tasks[name], docs[name][:limit], concurrency=256 // len(docs), ordered=False):
            total += 1
            valid += item.extraction is not None

    await asyncio.gather(*(stream(name, 16) for name in docs))  # warm-up: grammars compiled, adapters loaded
    valid = total = 0
    start = time.perf_counter()
    await asyncio.gather(*(stream(name) for name in docs))
    seconds = time.perf_counter() - start
    return {"documents": total, "valid": valid, "seconds": round(seconds, 2), "docs_per_s": round(total / seconds, 1)}


def plot(receipt: dict[str, Any], synthetic: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    runs = receipt["runs"]
    labels = [*RECEIPT_FIELDS, "mean"]
    width = 0.8 / len(runs)
    for k, (name, run) in enumerate(runs.items()):
        values = [run["fields"][f] for f in RECEIPT_FIELDS] + [run["mean_exact"]]
        a.bar([i + k * width for i in range(len(labels))], values, width, label=name)
    a.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
    a.set_ylim(0, 1)
    a.set_title(f"SROIE receipts, held-out {receipt['test_documents']} docs: exact match")
    a.legend(fontsize=7)
    names = list(synthetic["schemas"])
    base = [synthetic["schemas"][s]["base"]["macro_f1"] for s in names]
    tuned = [synthetic["schemas"][s]["adapter"]["macro_f1"] for s in names]
    b.bar([i - 0.2 for i in range(len(names))], base, 0.4, label="base")
    b.bar([i + 0.2 for i in range(len(names))], tuned, 0.4, label="adapter")
    b.set_xticks(range(len(names)), names)
    b.set_ylim(0, 1)
    b.set_title("dev sets: macro F1")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("SMOLLM2_DIR"), help="HF folder of SmolLM2 ($SMOLLM2_DIR); "
                        "default with --engine local: the packaged model")
    parser.add_argument("--engine", choices=["vllm", "local"], default="vllm")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--adapters", default="/tmp/lora-adapters", help="where the adapters are written (not the repo)")
    parser.add_argument("--data", default=str(SROIE))
    parser.add_argument("--tiny", action="store_true", help="a CPU smoke run: a few short documents, 1 step")
    parser.add_argument("--synthetic-train", type=int, default=240, help="synthetic training documents per schema")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--serving-docs", type=int, default=1024, help="documents of the serving run (half per schema)")
    parser.add_argument("--phase", choices=["all", "train", "eval", "plain"], default="all",
                        help="all: each phase in its own process (GPU memory is freed in between)")
    return parser


class Plan:
    """What every phase derives the same way from the arguments: data, splits, sizes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tiny = args.tiny
        self.model = None if args.engine == "local" and not args.model else args.model
        self.results, self.adapters_dir = Path(args.out), Path(args.adapters)
        self.parts = self.adapters_dir / "parts"
        self.registry = default_registry()
        self.receipt_task = self.registry.get("receipt")
        sroie, self.skipped = read_training_set(args.data, self.receipt_task)
        self.pool, self.test = split_documents(sroie, 0.2, SPLIT_SEED)
        if self.tiny:  # the shortest documents: a CPU run in minutes
            self.pool = sorted(self.pool, key=lambda d: len(d.text))[:5]
            self.test = sorted(self.test, key=lambda d: len(d.text))[:1]
        self.dev = {s: read_dataset(ROOT / "fixtures" / "dev" / f"{s}.jsonl", self.registry.get(s),
                                    limit=1 if self.tiny else None) for s in SYNTHETIC}
        self.retries = 0 if self.tiny else 2
        self.concurrency = 8 if self.tiny else 256
        self.serving_n = 2 if self.tiny else args.serving_docs // 2

    def serving_docs(self) -> tuple[dict[str, Any], dict[str, list[str]]]:
        tasks = {s: self.registry.get(s) for s in ("person", "invoice")}
        return tasks, {s: [self.dev[s][i % len(self.dev[s])].text for i in range(self.serving_n)] for s in tasks}

    def write(self, name: str, obj: Any) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        (self.parts / f"{name}.json").write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")

    def read(self, name: str) -> Any:
        return json.loads((self.parts / f"{name}.json").read_text(encoding="utf-8"))


def phase_train(plan: Plan) -> None:
    args, tiny = plan.args, plan.tiny
    config = TrainConfig(epochs=1 if tiny else args.epochs, max_steps=1 if tiny else None,
                         batch_size=1 if tiny else args.batch_size, learning_rate=args.lr, validation=0.1 if not tiny else 0.2,
                         patience=2, seed=0)
    plan.results.mkdir(parents=True, exist_ok=True)
    trained = {"receipt": train(plan.receipt_task, plan.pool, plan.adapters_dir / "receipt", config, plan.model, plan.results)}
    sizes = {}
    for schema in SYNTHETIC:
        task = plan.registry.get(schema)
        docs = synthetic_training_set(schema, 5 if tiny else args.synthetic_train, task)
        dev_texts = {row["text"] for row in _dev_generator().dev_set(schema)}
        assert not {d.text for d in docs} & dev_texts, "a training document is a dev document"
        sizes[schema] = len(docs)
        trained[schema] = train(task, docs, plan.adapters_dir / schema, config, plan.model, plan.results)
    plan.write("train", {"trained": trained, "synthetic_train_documents": sizes})


def phase_eval(plan: Plan) -> None:
    from extractor.adapters import AdapterRegistry

    adapters = AdapterRegistry.load([plan.adapters_dir / s for s in ("receipt", *SYNTHETIC)])
    receipt_adapter = adapters.get("receipt")
    assert receipt_adapter is not None
    overlap = [d.id for d in plan.test if receipt_adapter.trained_on(d.id, d.text)]
    assert not overlap, f"test documents in the training split: {overlap}"
    engine = make_engine(plan.args.engine, plan.model, list(adapters))
    out: dict[str, Any] = {"receipt": {}, "synthetic": {}, "serving": {}}

    async def run() -> None:
        for label, adapter, grounded in (("base", None, False), ("base+grounded", None, True),
                                         ("adapter", receipt_adapter.path, False),
                                         ("adapter+grounded", receipt_adapter.path, True)):
            ev = await evaluate(engine, plan.receipt_task, plan.test, adapter=adapter, grounded=grounded,
                                max_retries=plan.retries, concurrency=plan.concurrency)
            out["receipt"][label] = {**receipt_scores(ev.outcomes), "seconds": round(ev.seconds, 2)}
            print(f"receipt {label}: {out['receipt'][label]}", file=sys.stderr)
        for schema in SYNTHETIC:
            task = plan.registry.get(schema)
            scores: dict[str, Any] = {}
            for label, adapter in (("base", None), ("adapter", plan.adapters_dir / schema)):
                ev = await evaluate(engine, task, plan.dev[schema], adapter=adapter, grounded=None,
                                    max_retries=plan.retries, concurrency=plan.concurrency)
                report = build_report(ev)
                scores[label] = {"macro_f1": report["summary"]["macro_f1"], "valid": report["valid"],
                                 "documents": report["documents"],
                                 "fields": {f: round(report["fields"][f]["f1"], 4) for f in report["top_level_fields"]}}
            out["synthetic"][schema] = scores
            print(f"{schema}: base {scores['base']['macro_f1']} adapter {scores['adapter']['macro_f1']}", file=sys.stderr)
        tasks, docs = plan.serving_docs()
        two = AdapterRegistry([a for a in adapters if a.schema in tasks])
        out["serving"]["adapters_two_schemas"] = await serving(engine, tasks, docs, two)
        out["serving"]["base_on_lora_engine"] = await serving(engine, tasks, docs, None)
        await engine.aclose()

    asyncio.run(run())
    plan.write("eval", out)


def phase_plain(plan: Plan) -> None:
    """The base model on a plain engine (no LoRA): what serving with adapters is measured against."""
    engine = make_engine(plan.args.engine, plan.model, [])

    async def run() -> dict[str, Any]:
        tasks, docs = plan.serving_docs()
        result = await serving(engine, tasks, docs, None)
        await engine.aclose()
        return result

    plan.write("plain", asyncio.run(run()))


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.engine == "vllm" and not args.model:
        parser.error("--model (or $SMOLLM2_DIR) is required with --engine vllm")
    plan = Plan(args)
    if args.phase != "all":
        {"train": phase_train, "eval": phase_eval, "plain": phase_plain}[args.phase](plan)
        return 0
    started = time.perf_counter()
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--phase")]
    seconds: dict[str, float] = {}
    for phase in ("train", "eval", "plain"):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, *forwarded, "--phase", phase], check=False)
        seconds[phase] = round(time.perf_counter() - t0, 1)
        if done.returncode != 0:
            print(f"lora_train: phase {phase} failed ({done.returncode})", file=sys.stderr)
            return done.returncode
    trained, evaluated, plain = plan.read("train"), plan.read("eval"), plan.read("plain")
    meta: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "engine": args.engine,
                            "model": plan.model or SERVED, "tiny": plan.tiny, "phase_seconds": seconds}
    try:
        import torch

        meta["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        meta["device"] = "?"
    runs = evaluated["serving"]
    runs["base_plain_engine"] = plain
    runs["adapters_vs_base_docs_per_s"] = round(runs["adapters_two_schemas"]["docs_per_s"] / plain["docs_per_s"], 3)
    receipt = {**meta, "data": str(args.data), "skipped_labels": plan.skipped, "train_pool": len(plan.pool),
               "test_documents": len(plan.test), "split_seed": SPLIT_SEED,
               "task": "receipt contract; SROIE labels have no items, trained as items: null; 4 labeled fields scored",
               "scoring": "exact match per field after collapsing whitespace and upper-casing",
               "training": trained["trained"]["receipt"], "runs": evaluated["receipt"]}
    synth = {**meta, "train_seed": TRAIN_SEED, "train_documents": trained["synthetic_train_documents"],
             "training": {s: trained["trained"][s] for s in SYNTHETIC}, "schemas": evaluated["synthetic"]}
    serve = {**meta, "in_flight": 256, "schemas": ["person", "invoice"], "max_retries": 0, "runs": runs}
    plan.results.mkdir(parents=True, exist_ok=True)
    for name, obj in (("lora_receipt", receipt), ("lora_synthetic", synth), ("lora_serving", serve)):
        (plan.results / f"{name}.json").write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    try:
        plot(receipt, synth, plan.results / "lora_eval.png")
    except ImportError:
        print("lora_train: no matplotlib, lora_eval.png not written", file=sys.stderr)
    print(json.dumps({"receipt_mean_exact": {k: v["mean_exact"] for k, v in evaluated["receipt"].items()},
                      "macro_f1": {s: {k: v["macro_f1"] for k, v in o.items()} for s, o in evaluated["synthetic"].items()},
                      "training_s": {s: t["seconds"] for s, t in trained["trained"].items()},
                      "serving": runs, "seconds": round(time.perf_counter() - started, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
