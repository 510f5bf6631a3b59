"""How long a schema waits for the compile guard's verdict when many schemas arrive at once.

On the H200 (issue 12, sixth run) 119 of 346 real-world schemas under 1.5 KB took over 200 s end to
end with ONE attempt, behind the heavy schemas of the same run. This bench runs the guard alone
(no model): every schema of a shard of `jsonschemabench-dev.jsonl`, prepared as a raw task, is
checked by one `CompileGuard` at once, as `schema_e2e` sends them, and the time to each verdict is
recorded, split by the schema's size.

    python bench/guard_queue.py [--shard 0/2] [--processes 2] [--timeout 5]
        -> bench/results/guard_queue.json and .png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the bench package, run as a script
    sys.path.insert(0, str(ROOT))
from bench.schema_coverage import percentile  # noqa: E402
from bench.schema_e2e import DATA, RESULTS, _shard, load  # noqa: E402
from extractor import task_from_json_schema  # noqa: E402
from extractor.engines.compile_guard import CompileGuard  # noqa: E402
from extractor.engines.grammar_check import local_tokenizer_info_json  # noqa: E402
from extractor.errors import SchemaRejected  # noqa: E402

#: a schema this long or shorter (its grammar schema's JSON) counts as small
SMALL_BYTES = 1500


def _quantiles(values: list[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "max": percentile(values, 100)}


async def run(schemas: list[tuple[str, dict[str, Any]]], guard: CompileGuard) -> list[dict[str, Any]]:
    await guard.ready()
    start = time.perf_counter()

    async def one(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        verdict = "ok"
        try:
            await guard.check(schema)
        except SchemaRejected as exc:
            verdict = type(exc).__name__
        return {"id": name, "bytes": len(json.dumps(schema)), "verdict": verdict,
                "seconds": round(time.perf_counter() - start, 3)}

    return list(await asyncio.gather(*(one(n, s) for n, s in schemas)))


def plot(summary: dict[str, Any], items: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for verdict, colour in (("ok", "tab:blue"), ("GrammarTimeout", "tab:red"), ("SchemaRejected", "tab:orange")):
        pts = [it for it in items if it["verdict"] == verdict]
        ax.scatter([it["bytes"] for it in pts], [it["seconds"] for it in pts], s=8, c=colour, label=verdict)
    ax.set_xscale("log")
    ax.set_xlabel("grammar schema (bytes)")
    ax.set_ylabel("seconds to the guard's verdict")
    ax.set_title(f"{summary['schemas']} schemas at once, {summary['processes']} children, "
                 f"{summary['timeout_s']:g} s limit ({summary['order']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--shard", type=_shard, default=(0, 2), metavar="K/N")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="guard_queue")
    args = parser.parse_args(argv)
    schemas = []
    for row in load(args.data, None, 0, args.limit, args.shard):
        try:
            task = task_from_json_schema(row["schema"], name=row["id"].replace("/", "_"))
        except SchemaRejected:
            continue
        schemas.append((row["id"], dict(task.strict_schema)))
    guard = CompileGuard(local_tokenizer_info_json(), timeout_s=args.timeout, processes=args.processes)
    try:
        items = asyncio.run(run(schemas, guard))
    finally:
        guard.close()
    small = [it["seconds"] for it in items if it["bytes"] <= SMALL_BYTES]
    summary = {"benchmark": "guard_queue", "order": CompileGuard.ORDER, "processes": args.processes,
               "timeout_s": args.timeout, "shard": f"{args.shard[0]}/{args.shard[1]}", "schemas": len(items),
               "cpus": os.cpu_count(), "small_bytes": SMALL_BYTES,
               "small": _quantiles(small), "all": _quantiles([it["seconds"] for it in items]),
               "verdicts": {v: sum(it["verdict"] == v for it in items) for v in {it["verdict"] for it in items}},
               "items": items}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    plot(summary, items, args.out / f"{args.name}.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "items"}, indent=1))


if __name__ == "__main__":
    main()
