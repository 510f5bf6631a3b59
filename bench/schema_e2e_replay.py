"""Replay the schemas a `schema_e2e` run failed on, with the bench's settings, on any engine.

    python bench/schema_e2e_replay.py --run bench/results/schema_e2e_vllm.json --loose-limit 25 \
        --engine vllm --engine-option model=DIR --out bench/results/schema_e2e_replay_vllm_cpu.json

Two groups of the partial run's failures are replayed: outputs cut at `max_tokens` (run with the
compiled grammar) and schemas that ran with the validate-only grammar (`validate_only(task)`).
Each is extracted with `--max-retries` and `--max-tokens-cap` and checked against the ORIGINAL
schema; the JSON has each group's count, how many are valid and how many needed the bounded
attempt, and one row per schema. Run it from two checkouts (PYTHONPATH) for a before and after on
the same machine: the failures were selected on another one, so only such a pair compares.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.schema_e2e import DOCUMENT  # noqa: E402
from bench.shared_data import shared_data  # noqa: E402
from extractor import Extractor  # noqa: E402
from extractor.contracts.contract import task_from_json_schema, validate_only  # noqa: E402
from extractor.engines.registry import engine_names, parse_options  # noqa: E402
from extractor.errors import ExtractorError  # noqa: E402
from extractor.pipeline.validate import original_errors  # noqa: E402


def failures(run: Path, cut_limit: int | None, loose_limit: int | None) -> dict[str, list[str]]:
    """The failed schemas of a run: its summary JSON's `items`, or its `.partial.jsonl`."""
    text = run.read_text(encoding="utf-8")
    items = (json.loads(text)["items"] if run.suffix == ".json"
             else [json.loads(line) for line in text.splitlines() if line.strip()])
    cut = [i["id"] for i in items if "cut off" in (i.get("error") or "")]
    loose = [i["id"] for i in items if i["mode"] == "validate-only" and not i["valid"]]
    return {"cut": cut[:cut_limit], "validate_only": loose[:loose_limit]}


async def replay(extractor: Extractor, rows: dict[str, Any], groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    async def one(group: str, key: str) -> dict[str, Any]:
        task = task_from_json_schema(rows[key]["schema"], name=key.replace("/", "_"))
        if group == "validate_only":
            task = validate_only(task)
        row: dict[str, Any] = {"group": group, "id": key}
        try:
            result = await extractor.arun(task, DOCUMENT)
        except ExtractorError as exc:
            row.update(valid=False, attempts=getattr(exc, "attempts", 0), error=str(exc)[:160])
        else:
            errors = original_errors(json.dumps(rows[key]["schema"]), result.data)
            row.update(valid=not errors, attempts=result.meta.attempts, bounded=result.meta.bounded is not None)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    return list(await asyncio.gather(*(one(g, k) for g, keys in groups.items() for k in keys)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--run", type=Path, required=True, help="a schema_e2e run's JSON (or its .partial.jsonl)")
    parser.add_argument("--data", type=Path, default=shared_data("jsonschemabench-dev.jsonl"))
    parser.add_argument("--engine", default="vllm", choices=engine_names())
    parser.add_argument("--engine-option", action="append", metavar="KEY=VALUE", default=[])
    parser.add_argument("--cut-limit", type=int, help="at most N of the schemas whose outputs were cut")
    parser.add_argument("--loose-limit", type=int, help="at most N of the validate-only schemas that failed")
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--max-tokens-cap", type=int, default=1024)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = {r["id"]: r for r in map(json.loads, args.data.read_text(encoding="utf-8").splitlines()) if r}
    groups = failures(args.run, args.cut_limit, args.loose_limit)
    extractor = Extractor(args.engine, max_retries=args.max_retries, max_tokens_cap=args.max_tokens_cap,
                          **parse_options(args.engine_option))
    start = time.perf_counter()
    try:
        items = asyncio.run(replay(extractor, rows, groups))
    finally:
        extractor.close()
    summary = {"benchmark": "schema_e2e_replay", "engine": args.engine, "model": extractor.engine.model,
               "max_retries": args.max_retries, "max_tokens_cap": args.max_tokens_cap,
               "seconds": round(time.perf_counter() - start, 1),
               **{g: {"schemas": sum(i["group"] == g for i in items), "valid": sum(i["valid"] for i in items if i["group"] == g),
                      "bounded": sum(bool(i.get("bounded")) for i in items if i["group"] == g)} for g in groups},
               "items": items}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "items"}, indent=1))


if __name__ == "__main__":
    main()
