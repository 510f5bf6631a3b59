"""Time to the first streamed field (`Extractor.astream`) against the engine's time to first token,
on person records, one request at a time and many at once (issue 18's streaming target: the
first field within 1.5x the engine's TTFT on the GPU).

    python bench/stream_ttff.py --engine local --docs 12 --concurrency 1 4
    python bench/stream_ttff.py --engine vllm --engine-option model=DIR --docs 512 --concurrency 1 64 256

For each concurrency level, on the same documents and engine:
- TTFT: the engine alone, the prompt and schema of the document's first attempt (the task's
  schema), `max_tokens=1`, `concurrency` requests in flight;
- streamed: `astream` with the contract's default options (grounded decoding for person), the
  time to its first `field` event and to its `result`, `concurrency` documents in flight.
Each field streamed is checked against the result (`changed` counts any that differ; it must be 0).
Writes `stream_ttff_<engine>.json` and `.png` to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.person_records import exact, person_records  # noqa: E402
from extractor import Extractor, GenerationRequest  # noqa: E402
from extractor.engines import create_engine, parse_options  # noqa: E402
from extractor.pipeline.prompt import build_messages  # noqa: E402


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def _bounded(n: int, items: list[Any], fn: Any) -> list[Any]:
    gate = asyncio.Semaphore(n)

    async def one(item: Any) -> Any:
        async with gate:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


async def level(extractor: Extractor, docs: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    engine = extractor.engine
    task = extractor.task("person")

    async def ttft(doc: dict[str, Any]) -> float:
        request = GenerationRequest(messages=tuple(build_messages(task, doc["text"])), schema=task.strict_schema,
                                    max_tokens=1)
        started = time.perf_counter()
        await engine.generate([request])
        return time.perf_counter() - started

    async def streamed(doc: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        first: float | None = None
        fields: dict[str, Any] = {}
        result: dict[str, Any] = {}
        async for event in extractor.astream("person", doc["text"]):
            if event["event"] == "field":
                if first is None:
                    first = time.perf_counter() - started
                fields[event["field"]] = event["value"]
            elif event["event"] == "result":
                result = event
        total = time.perf_counter() - started
        data = result.get("data") or {}
        early = sum(1 for e in fields if e in data)
        return {"first": first if first is not None else total, "total": total,
                "changed": sum(1 for k, v in fields.items() if data.get(k) != v),
                "exact": exact(data, doc["expected"]), "early_fields": early}

    wall = time.perf_counter()
    ttfts = await _bounded(concurrency, docs, ttft)
    ttft_wall = time.perf_counter() - wall
    wall = time.perf_counter()
    runs = await _bounded(concurrency, docs, streamed)
    stream_wall = time.perf_counter() - wall
    firsts = [r["first"] for r in runs]
    out = {
        "concurrency": concurrency, "documents": len(docs),
        "ttft_ms": {"p50": _quantile(ttfts, 0.5), "p90": _quantile(ttfts, 0.9)},
        "first_field_ms": {"p50": _quantile(firsts, 0.5), "p90": _quantile(firsts, 0.9)},
        "result_ms": {"p50": _quantile([r["total"] for r in runs], 0.5),
                      "p90": _quantile([r["total"] for r in runs], 0.9)},
        "first_field_over_ttft_p50": round(statistics.median(firsts) / statistics.median(ttfts), 2),
        "fields_changed_after_sent": sum(r["changed"] for r in runs),
        "exact": sum(r["exact"] for r in runs),
        "ttft_wall_s": round(ttft_wall, 2), "stream_wall_s": round(stream_wall, 2),
    }
    print(json.dumps(out), flush=True)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    engine = create_engine(args.engine, **parse_options(args.engine_option))
    docs = person_records(args.docs)
    async with Extractor(engine) as extractor:
        await level(extractor, docs[: min(8, len(docs))], 1)  # warm-up: grammars, caches, kernels
        levels = [await level(extractor, docs if c > 1 else docs[: args.single_docs], c) for c in args.concurrency]
    await engine.aclose()
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "engine": args.engine, "model": engine.model,
            "options": "person contract defaults (grounded decoding)", "levels": levels}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    xs = range(len(levels))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.27
    for k, (key, label) in enumerate([("ttft_ms", "engine TTFT"), ("first_field_ms", "first streamed field"),
                                      ("result_ms", "result")]):
        ax.bar([x + (k - 1) * width for x in xs], [lv[key]["p50"] for lv in levels], width, label=label)
    ax.set_xticks(list(xs), [f"{lv['concurrency']} in flight" for lv in levels])
    ax.set_ylabel("p50 (ms)")
    ax.set_title(f"Streaming, person records, {result['engine']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="local")
    parser.add_argument("--engine-option", action="append", default=[])
    parser.add_argument("--docs", type=int, default=12, help="documents per concurrency level above 1")
    parser.add_argument("--single-docs", type=int, default=12, help="documents one at a time")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"stream_ttff_{args.engine.replace('-', '_')}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / f"{name}.png")
    print(f"wrote {args.out / name}.json")


if __name__ == "__main__":
    main()
