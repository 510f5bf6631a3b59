"""What spans, `require_grounded` and confidence cost: the post-processing alone (pure Python, per
document), its worst case (a value found nowhere, so the fuzzy search scans the whole document),
and the local engine's docs/s with and without them (logprobs computed in the decode loop).

    python bench/grounding_overhead.py [--no-model]   -> bench/results/grounding_overhead.json and .png
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.person_records import person_records  # noqa: E402
from extractor import task_from_model  # noqa: E402
from extractor.engines.base import TokenLogprob  # noqa: E402
from extractor.grounding.confidence import field_confidence  # noqa: E402
from extractor.grounding.spans import ground_record, ungrounded_errors  # noqa: E402
from schemas import Person  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PERSON = task_from_model(Person)


def tokens_of(text: str, width: int = 3) -> list[TokenLogprob]:
    """Stand-in tokens: the output cut every `width` characters (SmolLM2 averages about 2.5 a token)."""
    return [TokenLogprob(text[i:i + width], -0.05) for i in range(0, len(text), width)]


def post_processing_us(n: int) -> dict[str, float]:
    records = person_records(n)
    outputs = [json.dumps({**r["expected"], "email": None}, separators=(",", ":")) for r in records]
    tokens = [tokens_of(o) for o in outputs]
    timings: dict[str, list[float]] = {"spans + require_grounded": [], "confidence": []}
    for record, output, toks in zip(records, outputs, tokens, strict=True):
        data = json.loads(output)
        start = time.perf_counter()
        spans = ground_record(data, record["text"])
        ungrounded_errors(data, PERSON.strict_schema, spans)
        middle = time.perf_counter()
        field_confidence(output, toks)
        end = time.perf_counter()
        timings["spans + require_grounded"].append((middle - start) * 1e6)
        timings["confidence"].append((end - middle) * 1e6)
    out = {}
    for name, values in timings.items():
        values.sort()
        out[f"{name} mean_us"] = round(statistics.fmean(values), 1)
        out[f"{name} p99_us"] = round(values[int(0.99 * (len(values) - 1))], 1)
    return out


def worst_case_ms(sizes: tuple[int, ...]) -> dict[str, float]:
    """A document of `size` characters of person sentences, and a name that occurs nowhere in it."""
    records = person_records(4096, seed=7)
    out = {}
    for size in sizes:
        doc, i = "", 0
        while len(doc) < size:
            doc += records[i % len(records)]["text"] + " "
            i += 1
        data = {"name": "Quentin Zyxwvut", "age": 999, "city": "Atlantis", "email": None}
        start = time.perf_counter()
        ground_record(data, doc)
        out[f"{size} chars ms"] = round((time.perf_counter() - start) * 1000, 1)
    return out


async def local_docs_per_s(n: int, rounds: int) -> dict[str, Any]:
    from extractor import Extractor
    from extractor.engines.local import LocalEngine

    engine = LocalEngine()
    texts = [r["text"] for r in person_records(n, seed=11)]
    plain = Extractor(engine, max_retries=0)
    rates: dict[str, list[float]] = {"off": [], "spans + confidence": []}
    try:
        await asyncio.gather(*(plain.arun(Person, t) for t in texts[:4]))  # warm-up
        for _ in range(rounds):  # interleaved, so load from elsewhere hits both alike
            for name, kw in (("off", {}), ("spans + confidence", {"spans": True, "confidence": True})):
                start = time.perf_counter()
                await asyncio.gather(*(plain.arun(Person, t, **kw) for t in texts))
                rates[name].append(n / (time.perf_counter() - start))
    finally:
        engine.close()
    return {f"{name} docs_per_s": round(statistics.median(v), 2) for name, v in rates.items()} | {
        "docs": n, "rounds": rounds, "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()}}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("post-processing per document (µs)", {k.removesuffix(" mean_us"): v for k, v in result["post"].items()
                                                      if k.endswith("mean_us")}),
              ("worst case: value found nowhere (ms)", {k.removesuffix(" ms"): v for k, v in result["worst"].items()})]
    if "local" in result:
        panels.append(("local engine (docs/s)", {k.removesuffix(" docs_per_s"): v for k, v in result["local"].items()
                                                 if k.endswith("docs_per_s")}))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(list(values), list(values.values()), color="#8ecae6")
        for i, v in enumerate(values.values()):
            ax.text(i, v, f"{v:g}", ha="center", va="bottom")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-model", action="store_true", help="skip the local engine comparison")
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "post": post_processing_us(2048), "worst": worst_case_ms((1_000, 10_000, 100_000)),
    }
    if not args.no_model:
        result["local"] = asyncio.run(local_docs_per_s(args.docs, args.rounds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "grounding_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "grounding_overhead.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
