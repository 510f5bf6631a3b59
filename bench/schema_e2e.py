"""End to end on real-world schemas: the share of ALL jsonschemabench-dev schemas that return a record
valid against the user's ORIGINAL schema, each run as a raw-schema task with the document
"Write one realistic example record that follows the schema."

Each schema goes through the product's own path: the engine's compile guard (vLLM) or compile
child (local) checks its grammar within `--compile-budget`; one refused or past the budget is
decoded under its validate-only grammar (the schema's skeleton, `ExtractOptions.grammar_fallback`,
`meta.grammar`), the answer checked against the original schema, and the results say how many
did. `--pre-check` instead compiles every grammar here first, in `--check-workers` children, and
sends the ones past the budget as validate-only tasks (the earlier way of this benchmark).

CPU sample:  python bench/schema_e2e.py --engine local --sample 100 --seed 0
GPU (all):   python bench/schema_e2e.py --engine vllm --engine-option model=$SMOLLM2_DIR --out DIR
Writes DIR/schema_e2e_{engine}.json (summary, per group, per-schema outcome without records), and
each outcome as it completes to DIR/schema_e2e_{engine}.partial.jsonl (what a stopped run keeps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import random
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from extractor import Extractor
from extractor.contracts.contract import Task, task_from_json_schema, validate_only
from extractor.engines.grammar_check import GrammarChecker
from extractor.engines.registry import engine_names, parse_options
from extractor.errors import ExtractorError, SchemaRejected
from extractor.pipeline.loop import shortened
from extractor.pipeline.validate import original_errors

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the bench package, run as a script
    sys.path.insert(0, str(ROOT))
from bench.profile_hooks import ProfileHooks, RequestTimes  # noqa: E402
from bench.shared_data import shared_data  # noqa: E402

DATA = shared_data("jsonschemabench-dev.jsonl")
RESULTS = ROOT / "bench" / "results"
DOCUMENT = "Write one realistic example record that follows the schema."


def load(data: Path, sample: int | None, seed: int, limit: int | None,
         shard: tuple[int, int] = (0, 1), ids: Path | None = None) -> list[dict[str, Any]]:
    """The schemas to run: all (or those `ids` names, one per line), a random sample, the first
    `limit`, then every `shard[1]`-th from `shard[0]` (one device call runs one shard; `--merge`
    sums them)."""
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    if ids is not None:
        wanted = {line.strip() for line in ids.read_text(encoding="utf-8").splitlines() if line.strip()}
        rows = [row for row in rows if row["id"] in wanted]
    if sample:
        rows = random.Random(seed).sample(rows, min(sample, len(rows)))
    rows = rows[:limit] if limit else rows
    return rows[shard[0]::shard[1]]


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    shard = (int(index), int(count or 1))
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"--shard K/N with 0 <= K < N, got {text}")
    return shard


def _name(args: argparse.Namespace) -> str:
    """The results' file name: one per engine, one per shard of a sharded run."""
    index, count = args.shard
    return (f"schema_e2e_{args.engine}" + (f"_shard{index}of{count}" if count > 1 else "")
            + (f"_{args.ids.stem}" if args.ids else ""))


def build_tasks(rows: list[dict[str, Any]], budget_s: float,
                workers: int = 1, pre_check: bool = True) -> dict[str, tuple[Task[Any] | None, str]]:
    """Each schema's task and grammar mode: `grammar`, `validate-only`, or `refused: reason`.
    The grammars are compiled by `workers` checker processes at once (a schema past the budget
    costs its budget plus a new child: one checker took longer than 540 s for the 565 schemas)."""
    checkers = [GrammarChecker(timeout_s=budget_s) for _ in range(max(1, workers) if pre_check else 0)]
    idle: queue.SimpleQueue[GrammarChecker] = queue.SimpleQueue()
    for c in checkers:
        idle.put(c)

    def one(row: dict[str, Any]) -> tuple[str, tuple[Task[Any] | None, str]]:
        try:
            task = task_from_json_schema(row["schema"], name=row["id"].replace("/", "_"))
        except SchemaRejected as exc:
            return row["id"], (None, f"refused: {exc}"[:300])
        if task.prepared is not None and task.prepared.skeleton_only:
            return row["id"], (task, "validate-only")
        if not pre_check:
            return row["id"], (task, "grammar")
        checker = idle.get()
        try:
            check = checker.check(task.strict_schema)
        finally:
            idle.put(checker)
        return row["id"], ((task, "grammar") if check.ok else (validate_only(task), "validate-only"))

    out: dict[str, tuple[Task[Any] | None, str]] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(checkers))) as pool:
            for i, (key, value) in enumerate(pool.map(one, rows), 1):
                out[key] = value
                if i % 50 == 0 or i == len(rows):
                    print(f"checked {i}/{len(rows)} schemas", file=sys.stderr, flush=True)
    finally:
        for c in checkers:
            c.close()
    return out


async def run_all(extractor: Extractor, rows: list[dict[str, Any]], tasks: dict[str, tuple[Task[Any] | None, str]],
                  concurrency: int, partial: Path) -> list[dict[str, Any]]:
    """Every schema's outcome; each is also appended to `partial` (JSON lines) as it completes,
    so a run stopped early keeps what it measured."""
    gate = asyncio.Semaphore(concurrency)
    done: list[dict[str, Any]] = []
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("", encoding="utf-8")

    def report(item: dict[str, Any]) -> dict[str, Any]:  # progress on stderr: a long run shows where it is
        done.append(item)
        with partial.open("a", encoding="utf-8") as f:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
        valid = sum(it["valid"] for it in done)
        print(f"[{len(done)}/{len(rows)}] {item['id']}: {'valid' if item['valid'] else 'NOT valid'} "
              f"({valid} valid so far)", file=sys.stderr, flush=True)
        return item

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        RequestTimes.current.set(row["id"])  # this task's own context: `--profile` times it
        task, mode = tasks[row["id"]]
        item: dict[str, Any] = {"id": row["id"], "group": row["group"], "mode": mode, "valid": False}
        if task is None:
            return item
        async with gate:
            start = time.perf_counter()
            try:
                result = await extractor.arun(task, DOCUMENT)
            except ExtractorError as exc:
                item.update(error=f"{type(exc).__name__}: {exc}"[:300], seconds=round(time.perf_counter() - start, 2))
                last = getattr(exc, "last_output", None)
                if last:  # what the model wrote last: its start and end (why it was cut, what it missed)
                    item["last_output"] = shortened(last, 600)
                return item
        # the pipeline already validated it; checked again here, independently, against the original
        errors = original_errors(json.dumps(row["schema"]), result.data)
        if result.meta.grammar:  # the engine refused the grammar or could not compile it in time
            item["mode"] = result.meta.grammar
        item.update(valid=not errors, attempts=result.meta.attempts, max_tokens=result.meta.max_tokens,
                    seconds=round(time.perf_counter() - start, 2), errors=errors[:2])
        return item

    async def reported(row: dict[str, Any]) -> dict[str, Any]:
        return report(await one(row))

    return list(await asyncio.gather(*(reported(r) for r in rows)))


def summarize(items: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for it in items:
        c = groups[it["group"]]
        c["schemas"] += 1
        c["valid"] += it["valid"]
        c["accepted"] += not it["mode"].startswith("refused")
        c["validate_only"] += it["mode"].startswith("validate-only")
    total = len(items)
    valid = sum(it["valid"] for it in items)
    return {
        **meta,
        "schemas": total,
        "valid_against_original": valid,
        "valid_pct": round(100 * valid / total, 2) if total else None,
        "accepted_pct": round(100 * sum(c["accepted"] for c in groups.values()) / total, 2) if total else None,
        "validate_only_grammar": sum(c["validate_only"] for c in groups.values()),
        "per_group": {g: {**c, "valid_pct": round(100 * c["valid"] / c["schemas"], 1)} for g, c in sorted(groups.items())},
        "failures_by_cause": dict(Counter(_cause(it) for it in items if not it["valid"]).most_common(15)),
        "items": [{k: v for k, v in it.items() if k != "errors"} for it in items],
    }


def _cause(item: dict[str, Any]) -> str:
    """A failure's kind: its error or mode without the schema's id, up to the first detail
    ("ExtractionFailed: no valid output after 3 attempt(s): output cut off", "GrammarTimeout: ...")."""
    text = (item.get("error") or item["mode"]).replace(f"{item['id']}: ", "")
    head, _, detail = text.partition(" attempt(s): ")
    return (f"{head} attempt(s): {detail.split(':')[0][:40]}" if detail else text)[:90]


def _meta(args: argparse.Namespace, model: str) -> dict[str, Any]:
    return {"benchmark": "schema_e2e", "engine": args.engine, "model": model, "grammar_backend": "xgrammar",
            "sample": args.sample, "seed": args.seed, "max_retries": args.max_retries,
            "max_tokens_cap": args.max_tokens_cap, "compile_budget_s": args.compile_budget,
            "concurrency": args.concurrency, "document": DOCUMENT,
            **({"shard": f"{args.shard[0]}/{args.shard[1]}"} if args.shard[1] > 1 else {})}


def _write(args: argparse.Namespace, summary: dict[str, Any], name: str | None = None) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name or _name(args)}.json"
    path.write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    plot(summary, path.with_suffix(".png"))
    print(json.dumps({k: v for k, v in summary.items() if k != "items"}, indent=1))


def plot(summary: dict[str, Any], path: Path) -> None:
    """Valid against the original schema, per group, with the 80% target over all schemas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(summary["per_group"])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.bar(groups, [summary["per_group"][g]["valid_pct"] for g in groups], color="tab:green")
    ax.axhline(summary["valid_pct"], color="tab:green", linestyle=":", label=f"all: {summary['valid_pct']}%")
    ax.axhline(80, color="tab:red", linestyle="--", label="target 80% of all")
    ax.set_ylabel("valid against the original schema (%)")
    ax.set_title(f"{summary['engine']}: {summary['valid_against_original']} of {summary['schemas']} schemas "
                 f"end to end ({summary.get('seconds', '?')} s)")
    ax.tick_params(axis="x", rotation=60)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize_partial(args: argparse.Namespace) -> None:
    """The summary of the schemas a stopped run completed (its `.partial.jsonl`), saying how many
    of the planned ones that is: the figure is over the completed ones only, which are the faster."""
    partial = args.out / f"{_name(args)}.partial.jsonl"
    items = _items(partial)
    planned = len(load(args.data, args.sample, args.seed, args.limit, args.shard, args.ids))
    model = "SmolLM2-135M-Instruct" if args.engine == "local" else args.engine
    summary = summarize(items, {**_meta(args, model), "stopped_early": True, "completed": len(items),
                                "planned": planned})
    _write(args, summary)


def _items(path: Path) -> list[dict[str, Any]]:
    """The schemas' outcomes in a results file (`items`) or a run's `.partial.jsonl`."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return list(json.loads(text)["items"])
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def merge_shards(args: argparse.Namespace) -> None:
    """One summary of the shards' results (each a results file or a stopped shard's partial JSONL),
    over every schema planned: one not completed counts as not valid and is listed."""
    items: dict[str, dict[str, Any]] = {}
    for path in args.merge:
        for item in _items(path):
            items[item["id"]] = item
    planned = load(args.data, args.sample, args.seed, args.limit)
    missing = [row["id"] for row in planned if row["id"] not in items]
    ordered = [items[row["id"]] for row in planned if row["id"] in items]
    models = [json.loads(p.read_text(encoding="utf-8")).get("model") for p in args.merge if p.suffix == ".json"]
    model = next((m for m in models if m), "SmolLM2-135M-Instruct" if args.engine == "local" else "smollm2-135m-instruct")
    summary = summarize(ordered, {**_meta(args, model), "shards": [p.name for p in args.merge],
                                  "completed": len(ordered), "planned": len(planned), "not_completed": missing})
    if missing:  # over all planned: a schema a shard did not reach is not a valid record
        summary["valid_pct_of_planned"] = round(100 * summary["valid_against_original"] / len(planned), 2)
    _write(args, summary, f"schema_e2e_{args.engine}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--engine", default="local", choices=engine_names())
    parser.add_argument("--engine-option", action="append", metavar="KEY=VALUE", default=[])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sample", type=int, help="a random sample of N schemas (with --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                        help="every N-th schema from the K-th (0-based): one device call per shard")
    parser.add_argument("--ids", type=Path, metavar="FILE",
                        help="only the schemas with these ids (one per line): a stopped run's rest, "
                             "run in one more device call and then merged")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="RESULTS",
                        help="write one summary of these shards' results or partial JSONL files, running nothing")
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--max-tokens-cap", type=int, default=2048)
    parser.add_argument("--compile-budget", type=float, default=5.0, help="seconds xgrammar may take per schema")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--check-workers", type=int, default=os.cpu_count() or 1,
                        help="grammar checks at once, each in its own child process (with --pre-check)")
    parser.add_argument("--pre-check", action="store_true",
                        help="compile every grammar here first; past the budget, send a validate-only task")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", action="store_true",
                        help="also write DIR/<results>.profile.json: sampled stacks of every thread, the compile "
                             "guard's timeline, per schema the seconds in the guard and in generation "
                             "(with VLLM_ENABLE_V1_MULTIPROCESSING=0 the engine core's threads are sampled too)")
    parser.add_argument("--from-partial", action="store_true",
                        help="write the summary of a stopped run's .partial.jsonl (same arguments), running nothing")
    args = parser.parse_args(argv)
    if args.from_partial:
        summarize_partial(args)
        return
    if args.merge:
        merge_shards(args)
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    rows = load(args.data, args.sample, args.seed, args.limit, args.shard, args.ids)
    # the engine starts first: vLLM forks its engine core, which must happen before anything in this
    # process touches CUDA (the grammar checks' imports did, on the H200)
    engine_options = {"grammar_timeout_s": args.compile_budget, **parse_options(args.engine_option)}
    profile_path = args.out / f"{_name(args)}.profile.json"
    hooks = ProfileHooks.install(autosave=profile_path) if args.profile else None
    extractor = Extractor(args.engine, max_retries=args.max_retries, max_tokens_cap=args.max_tokens_cap,
                          **engine_options)
    if hooks is not None:
        hooks.requests.wrap(extractor.engine)
    tasks = build_tasks(rows, args.compile_budget, args.check_workers, args.pre_check)
    prepared_s = time.perf_counter() - started
    try:
        items = asyncio.run(run_all(extractor, rows, tasks, args.concurrency,
                                    args.out / f"{_name(args)}.partial.jsonl"))
    finally:
        extractor.close()
        if hooks is not None:
            hooks.write(profile_path)
    meta = {**_meta(args, extractor.engine.model), "prepare_and_check_s": round(prepared_s, 1),
            "seconds": round(time.perf_counter() - started, 1)}
    _write(args, summarize(items, meta))


if __name__ == "__main__":
    main()
