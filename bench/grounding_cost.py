"""What grounded decoding's per-document constraint costs on the CPU: building it (Python) and
compiling its grammar as the local engine does (a per-document schema: llguidance's template,
built lazily, `extractor.engines.lazy_grammar`, timed to its first token mask; a fallback whose
lists are bounded: xgrammar, one thread; the task's own schema: cached, 0), p50 / p99 and peak
memory, over document lengths 1k, 4k (the budget's edge), 5k, 20k and 200k characters
(invoice-like and receipt-like text, and the hostile one-line invoice of 400 amounts of issue 17),
under the default `ConstraintBudget` (what a call does: past the budget it falls back, see
`extractor.grounding.constraint`), and at 1k, 5k and 20k with no size budget (what it would cost).

Beside it, the choice of representation on real documents (`fixtures/dev/*.jsonl` receipts and
invoices, `../shared/data/sroie-dev.jsonl`): the document's spans as an `enum` (as before) vs the
`pattern` of their word trie (now), compile time and grammar memory; and llguidance's lazily
built substring grammar (`%regex {"substring_words": ...}`) for one span field: build time and
per-token mask time, against xgrammar's mask time on the compiled pattern.

    python bench/grounding_cost.py [--samples 8] [--real 24]  -> bench/results/grounding_cost.json and .png
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extractor import task_from_model  # noqa: E402
from extractor.engines.base import JSON_SEPARATORS  # noqa: E402
from extractor.engines.lazy_grammar import LazyGrammars, is_per_document  # noqa: E402
from extractor.grounding import decoding  # noqa: E402
from extractor.grounding.constraint import DEFAULT_BUDGET, ConstraintBudget, build_constraint  # noqa: E402
from schemas import Invoice, Receipt  # noqa: E402

RESULTS = ROOT / "bench" / "results"
from bench.shared_data import shared_data  # noqa: E402

SHARED = shared_data("sroie-dev.jsonl").parent
LENGTHS = (1_000, 4_000, 5_000, 20_000, 200_000)
TASKS = {"invoice": task_from_model(Invoice), "receipt": task_from_model(Receipt)}
WORDS = ("paper printer toner cable service support monthly licence widget bolt coffee tea rice chicken noodle "
         "fried spicy large small box pack delivery installation consulting hours design review").split()


def invoice_like(chars: int, rng: random.Random) -> str:
    lines = [f"{rng.choice(['Acme', 'Blue Heron', 'Nordwind'])} {rng.choice(['Ltd', 'GmbH', 'LLC'])}",
             f"{rng.randint(1, 400)} {rng.choice(['Pine', 'Main', 'Harbour'])} Street, Portland, OR 97204",
             f"Invoice INV-2024-{rng.randint(1000, 9999)}", f"Date: {rng.randint(1, 28):02d}.05.2024", "",
             "Description                     Qty    Unit price    Amount"]
    total = 0.0
    while sum(len(line) + 1 for line in lines) < chars - 60:
        qty, price = rng.randint(1, 20), rng.randint(100, 99_999) / 100
        total += qty * price
        desc = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))).capitalize()
        lines.append(f"{desc:<32}{qty:>3}    {price:>10,.2f}    {qty * price:>10,.2f}")
    lines += ["", f"Subtotal {total:,.2f}", f"VAT 20% {total * 0.2:,.2f}", f"Total due EUR {total * 1.2:,.2f}"]
    return "\n".join(lines)[:chars]


def receipt_like(chars: int, rng: random.Random) -> str:
    lines = [f"KEDAI {rng.choice(['MAKANAN', 'RUNCIT'])} {rng.choice(['SRI MELATI', 'MAJU JAYA'])}",
             f"NO {rng.randint(1, 99)}, JALAN SS 2/{rng.randint(1, 99)},", "47300 PETALING JAYA, SELANGOR",
             f"TEL: 03-{rng.randint(1000000, 9999999)}", f"RECEIPT NO: {rng.randint(100, 999)}-{rng.randint(10000, 99999)}",
             f"DATE: 2017-11-{rng.randint(1, 28):02d}  TIME: 19:{rng.randint(10, 59)}", "-" * 32]
    total = 0.0
    while sum(len(line) + 1 for line in lines) < chars - 80:
        price = rng.randint(100, 9_999) / 100
        total += price
        item = " ".join(rng.choice(WORDS).upper() for _ in range(rng.randint(1, 3)))
        lines.append(f"{item:<28}{price:>8.2f}")
    lines += ["-" * 32, f"TOTAL{total:>31.2f}", f"CASH{total + 10:>32.2f}", "Have a nice day"]
    return "\n".join(lines)[:chars]


def hostile(amounts: int = 400) -> str:
    """Issue 17's repro: one line, 400 amounts (3.2 KB)."""
    return "Widget " + " ".join(f"{1000 + i}.{(i * 37) % 100:02d}" for i in range(amounts))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Compiler:
    def __init__(self) -> None:
        import xgrammar as xgr
        from transformers import AutoTokenizer

        from extractor.engines.local import converted_model_dir

        self.xgr = xgr
        self.tokenizer: Any = AutoTokenizer.from_pretrained(converted_model_dir())
        self.info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=49152)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.lazy = LazyGrammars(self.tokenizer, 49152)
        self.bitmask = xgr.allocate_token_bitmask(1, 49152)

    def compile(self, schema: Any) -> tuple[float, float, Any]:
        """(ms, grammar MB, compiled grammar)"""
        start = time.perf_counter()
        grammar = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                    separators=JSON_SEPARATORS, strict_mode=True)
        return (time.perf_counter() - start) * 1000, grammar.memory_size_bytes / 2**20, grammar


    def engine_compile(self, schema: Any) -> tuple[float, float]:
        """(ms, MB) of what the local engine compiles for `schema`: a per-document schema's
        llguidance template and its first token mask (MB: the process's resident growth, as
        llguidance does not report its memory), else xgrammar's compiled grammar."""
        if not is_per_document(schema):
            return self.compile(schema)[:2]
        import psutil

        rss = psutil.Process().memory_info().rss
        start = time.perf_counter()
        self.lazy.compile(json.dumps(schema)).start().fill_next_token_bitmask(self.bitmask, 0)
        ms = (time.perf_counter() - start) * 1000
        return ms, max(0, psutil.Process().memory_info().rss - rss) / 2**20


def peak_mb(build: Callable[[], Any]) -> float:
    tracemalloc.start()
    build()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def bounded(compiler: Compiler, samples: int, budget: ConstraintBudget = DEFAULT_BUDGET,
            lengths: tuple[int, ...] = LENGTHS) -> list[dict[str, Any]]:
    """Each (kind, length): build under `budget`, then compile what the call would use."""
    rows = []
    groups: list[tuple[str, int, list[str]]] = []
    for kind, make in (("invoice", invoice_like), ("receipt", receipt_like)):
        for length in lengths:
            rng = random.Random(length)
            n = samples if length <= 5_000 else max(2, samples // 4)
            groups.append((kind, length, [make(length, rng) for _ in range(n)]))
    groups.append(("hostile", len(hostile()), [hostile()]))
    for kind, length, docs in groups:
        task = TASKS["receipt" if kind == "receipt" else "invoice"]
        total, build_ms, compile_ms, grammar_mb, statuses = [], [], [], [], []
        for doc in docs:
            start = time.perf_counter()
            built = build_constraint(task.strict_schema, doc, budget)
            b = (time.perf_counter() - start) * 1000
            # the task's own schema is compiled once and cached: 0 for a fallback that leaves it as it is
            c, mb = compiler.engine_compile(built.schema) if built.schema != task.strict_schema else (0.0, 0.0)
            build_ms.append(b)
            compile_ms.append(c)
            total.append(b + c)
            grammar_mb.append(mb)
            statuses.append(built.status)
        build_peak = peak_mb(lambda: build_constraint(task.strict_schema, docs[0], budget))  # noqa: B023
        row = {"kind": kind, "chars": length, "docs": len(docs), "status": dict(sorted(
            {s: statuses.count(s) for s in statuses}.items())),
            "build_p50_ms": round(pct(build_ms, 0.5), 1), "build_p99_ms": round(pct(build_ms, 0.99), 1),
            "compile_p50_ms": round(pct(compile_ms, 0.5), 1), "compile_p99_ms": round(pct(compile_ms, 0.99), 1),
            "total_p50_ms": round(pct(total, 0.5), 1), "total_p99_ms": round(pct(total, 0.99), 1),
            "grammar_mb_max": round(max(grammar_mb), 2), "build_peak_mb": round(build_peak, 2),
            "peak_mb": round(max(grammar_mb) + build_peak, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def real_documents(limit: int) -> Iterator[tuple[str, str]]:
    for kind in ("receipt", "invoice"):
        for line in (ROOT / "fixtures" / "dev" / f"{kind}.jsonl").read_text().splitlines():
            yield kind, json.loads(line)["text"]
    sroie = SHARED / "sroie-dev.jsonl"
    if sroie.exists():
        for i, line in enumerate(sroie.read_text().splitlines()):
            if i >= limit:
                break
            yield "receipt", json.loads(line)["text"]


def enum_spans(spans: Any) -> dict[str, Any]:
    return {"type": "string", "enum": list(spans)}


def representations(compiler: Compiler, limit: int) -> dict[str, Any]:
    """enum vs pattern of the same spans (the same strings accepted), per real document."""
    pattern_schema = decoding.span_schema
    out: dict[str, list[float]] = {"enum_ms": [], "pattern_ms": [], "enum_mb": [], "pattern_mb": [],
                                   "enum_kb": [], "pattern_kb": [], "chars": []}
    for kind, doc in real_documents(limit):
        strict = TASKS[kind].strict_schema
        for name, spans in (("pattern", pattern_schema), ("enum", enum_spans)):
            decoding.span_schema = spans  # type: ignore[assignment]
            try:
                schema = decoding.constrain_to_document(strict, doc)
            finally:
                decoding.span_schema = pattern_schema
            ms, mb, _ = compiler.compile(schema)
            out[f"{name}_ms"].append(ms)
            out[f"{name}_mb"].append(mb)
            out[f"{name}_kb"].append(len(json.dumps(schema)) / 1024)
        out["chars"].append(len(doc))
    summary: dict[str, Any] = {"docs": len(out["chars"]), "chars_max": max(out["chars"])}
    for key, values in out.items():
        if key != "chars":
            summary[f"{key}_p50"] = round(statistics.median(values), 2)
            summary[f"{key}_p99"] = round(pct(values, 0.99), 2)
    summary["speedup_p50"] = round(statistics.median(e / p for e, p in zip(out["enum_ms"], out["pattern_ms"],
                                                                                strict=True)), 2)
    print(json.dumps(summary), flush=True)
    return summary


def llguidance_substring(compiler: Compiler, limit: int) -> dict[str, Any] | None:
    """llguidance's lazily built substring grammar for one span field vs xgrammar's compiled pattern:
    build time and per-token mask time while writing one span."""
    try:
        import llguidance as llg
        import llguidance.hf
    except ImportError:
        return None
    xgr = compiler.xgr
    tok = llguidance.hf.from_tokenizer(compiler.tokenizer)
    rows: dict[str, list[float]] = {"llg_build_ms": [], "llg_mask_ms": [], "xgr_compile_ms": [], "xgr_mask_ms": []}
    for _, doc in list(real_documents(limit))[:limit]:
        spans = decoding.candidate_spans(doc)
        target = max(spans[: len(spans) // 2], key=len)
        text = json.dumps(target)
        ids = compiler.tokenizer.encode(text, add_special_tokens=False)
        words = json.dumps(doc)[1:-1]  # JSON-escaped: the substring is written inside a JSON string
        lark = f'start: "\\"" SPAN "\\""\nSPAN: %regex {{ "substring_words": {json.dumps(words)} }}'
        start = time.perf_counter()
        matcher = llg.LLMatcher(tok, llg.LLMatcher.grammar_from_lark(lark), log_level=0)
        rows["llg_build_ms"].append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        for t in ids:
            matcher.compute_bitmask()
            if not matcher.consume_token(t):
                break
        rows["llg_mask_ms"].append((time.perf_counter() - start) * 1000 / len(ids))
        ms, _, grammar = compiler.compile({"type": "string", "pattern": decoding.span_pattern(
            s for s in spans if not decoding._UNPATTERNED.search(s))})
        rows["xgr_compile_ms"].append(ms)
        m = xgr.GrammarMatcher(grammar)
        bitmask = xgr.allocate_token_bitmask(1, 49152)
        start = time.perf_counter()
        for t in ids:
            m.fill_next_token_bitmask(bitmask)
            if not m.accept_token(t):
                break
        rows["xgr_mask_ms"].append((time.perf_counter() - start) * 1000 / len(ids))
    summary = {k: round(statistics.median(v), 3) for k, v in rows.items()}
    summary["docs"] = len(rows["llg_build_ms"])
    print(json.dumps(summary), flush=True)
    return summary


def plot(rows: list[dict[str, Any]], unbounded: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker in (("invoice", "o"), ("receipt", "s")):
        mine = [r for r in rows if r["kind"] == kind]
        xs = [r["chars"] for r in mine]
        left.plot(xs, [max(r["total_p99_ms"], 0.1) for r in mine], marker=marker, label=f"{kind} p99")
        left.plot(xs, [max(r["total_p50_ms"], 0.1) for r in mine], marker=marker, linestyle=":", label=f"{kind} p50")
        right.plot(xs, [r["peak_mb"] for r in mine], marker=marker, label=kind)
    for kind in ("invoice", "receipt"):
        mine = [r for r in unbounded if r["kind"] == kind]
        left.plot([r["chars"] for r in mine], [r["total_p99_ms"] for r in mine], color="grey", alpha=0.6,
                  marker="x", label=f"{kind} p99, no size budget")
    for r in rows:
        if r["kind"] == "hostile":
            left.scatter([r["chars"]], [max(r["total_p99_ms"], 0.1)], color="red", zorder=5, label="400 amounts, 1 line")
            right.scatter([r["chars"]], [r["peak_mb"]], color="red", zorder=5, label="400 amounts, 1 line")
    left.step([1_000, 20_000, 200_000], [50, 500, 500], where="post", color="grey", linestyle="--", label="target")
    right.axhline(16, color="grey", linestyle="--", label="target")
    for ax, title in ((left, "build + compile (ms)"), (right, "peak memory per constraint (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("document characters")
        ax.set_title(title)
        ax.legend(fontsize=7)
    left.set_yscale("log")
    fig.suptitle("grounded decoding: per-document constraint under the default budget (CPU, the local engine: "
                 "llguidance per document)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8, help="documents per kind at 1k and 5k (a quarter at 20k, 200k)")
    parser.add_argument("--real", type=int, default=24, help="sroie-dev receipts beside the dev sets, for the representations")
    parser.add_argument("--out", type=Path, default=RESULTS / "grounding_cost.json")
    args = parser.parse_args()
    compiler = Compiler()
    compiler.compile(TASKS["invoice"].strict_schema)  # warm up
    rows = bounded(compiler, args.samples)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
        "note": "2-core CPU; compile as the local engine does: a per-document schema's llguidance template to its "
                "first token mask, a fallback with bounded lists by xgrammar (max_threads=1), the task's own schema "
                "cached (0). p99 over few documents is close to the max.",
        "budget": DEFAULT_BUDGET.__dict__, "targets": {"p99_ms_to_20k": 50, "p99_ms_to_200k": 500, "peak_mb": 16},
        "bounded": rows,
        # the same documents with no size budget (not 200k: the candidate spans alone take seconds)
        "unbounded": bounded(compiler, max(2, args.samples // 4), ConstraintBudget(
            max_document_chars=10**9, max_schema_bytes=10**12, build_timeout_s=600), (1_000, 5_000, 20_000)),
        "representations": representations(compiler, args.real),
        "llguidance_substring": llguidance_substring(compiler, min(args.real, 16)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, result["unbounded"], args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
