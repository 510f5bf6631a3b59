"""Long documents (fixtures/long/generate.py): line-item recall and precision, header-field
accuracy, per kind (invoices of 50-300 items, statements, staff reports read with `many`).

    python bench/eval_long.py --ids invoice-00-50,statement-00-60,staff-00-20    # CPU subset, local engine
        -> bench/results/eval_long_local.json and .png
    python bench/eval_long.py --engine vllm --engine-option model=$SMOLLM2_DIR --out DIR   # all 22, GPU
        -> DIR/eval_long_vllm.json and .png
    ... --stream    through Extractor.astream: each document's time to its first streamed event too
        -> DIR/eval_long_vllm_stream.json

Items are matched as a multiset of (text folded, numbers) tuples: an item counts as found only with
every field right. A document whose merged record fails validation is scored on its merged record
(`ExtractionFailed.partial`) and counted as not valid. Only summaries are written (per document:
counts and rates, no records).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extractor import Extractor  # noqa: E402
from extractor.engines import engine_names, parse_options  # noqa: E402
from extractor.errors import ExtractionFailed, ExtractorError  # noqa: E402
from fixtures.long.generate import documents  # noqa: E402
from schemas.statement import Statement  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LISTS = {"invoice": "line_items", "statement": "transactions"}


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.casefold().split())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(float(value), 2)
    return value


def _key(item: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(_norm(item.get(k)) for k in sorted(item) if k != "email")


def score(doc: dict[str, Any], data: Any) -> dict[str, Any]:
    """Recall and precision of the document's list, and its header fields' exact matches."""
    label = doc["label"]
    if doc["many"]:
        want, got, header = label, data or [], {}
    else:
        field = LISTS[doc["schema"]]
        want, got = label[field], (data or {}).get(field) or []
        header = {k: _norm((data or {}).get(k)) == _norm(v) for k, v in label.items() if k != field}
    wanted, found = Counter(_key(i) for i in want), Counter(_key(i) for i in got if isinstance(i, dict))
    hits = sum((wanted & found).values())
    return {"items": len(want), "extracted": sum(found.values()), "matched": hits,
            "recall": hits / max(1, len(want)), "precision": hits / max(1, sum(found.values())), "header": header,
            "_missed": [list(k) for k in (wanted - found).elements()], "_extra": [list(k) for k in (found - wanted).elements()]}


async def run(extractor: Extractor, docs: list[dict[str, Any]], options: dict[str, Any],
              stream: bool = False, dump: Path | None = None) -> list[dict[str, Any]]:
    schemas: dict[str, Any] = {"statement": Statement}  # not registered by default (no dev set)

    async def one(doc: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        valid, error, meta = True, None, {}
        first_event: float | None = None
        try:
            schema = schemas.get(doc["schema"], doc["schema"])
            if stream:
                async for event in extractor.astream(schema, doc["text"], many=doc["many"], **options):
                    first_event = first_event if first_event is not None else time.perf_counter() - started
                    if event["event"] == "result":
                        data, meta = event["data"], event["meta"]
            else:
                result = await extractor.arun(schema, doc["text"], many=doc["many"], **options)
                data, meta = result.data_dict(), result.to_dict()["meta"]
        except ExtractionFailed as exc:
            data, valid, error = getattr(exc, "partial", None), False, str(exc)[:300]
            if doc["many"] and isinstance(data, dict):
                data = data.get("records")
        except ExtractorError as exc:
            data, valid, error = None, False, f"{exc.code}: {str(exc)[:300]}"
        out = {"id": doc["id"], "schema": doc["schema"], "chars": len(doc["text"]), "valid": valid,
               "seconds": round(time.perf_counter() - started, 2), **score(doc, data)}
        long = meta.get("long") or {}
        out.update(chunks=long.get("chunks"), passes=long.get("passes"), conflicts=len(long.get("conflicts", [])),
                   completeness=[{k: v for k, v in c.items() if k != "field"} for c in long.get("completeness", [])],
                   tokens=meta.get("tokens"), error=error)
        if stream:
            out["first_event_s"] = round(first_event, 3) if first_event is not None else None
        print(json.dumps({k: out[k] for k in ("id", "valid", "recall", "precision", "seconds")}), file=sys.stderr)
        if dump is not None:  # what was missed and what was extra, for reading (never under bench/results)
            with dump.open("a") as f:
                f.write(json.dumps({"id": doc["id"], "missed": out["_missed"], "extra": out["_extra"],
                                    "header": out["header"], "error": error}) + "\n")
        del out["_missed"], out["_extra"]
        return out

    return list(await asyncio.gather(*(one(d) for d in docs)))


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def agg(group: list[dict[str, Any]]) -> dict[str, Any]:
        items, extracted, matched = (sum(r[k] for r in group) for k in ("items", "extracted", "matched"))
        header = [ok for r in group for ok in r["header"].values()]
        return {"documents": len(group), "valid": sum(r["valid"] for r in group), "items": items,
                "recall": round(matched / max(1, items), 4), "precision": round(matched / max(1, extracted), 4),
                "header_accuracy": round(sum(header) / len(header), 4) if header else None,
                "seconds": round(sum(r["seconds"] for r in group), 1),
                **({"first_event_s_median": sorted(f)[len(f) // 2]} if (f := [r["first_event_s"] for r in group
                                                                              if r.get("first_event_s")]) else {})}

    kinds = sorted({r["schema"] + (" (many)" if r["schema"] == "person" else "") for r in rows})
    by_kind = {k: agg([r for r in rows if r["schema"] + (" (many)" if r["schema"] == "person" else "") == k])
               for k in kinds}
    return {"overall": agg(rows), "by_kind": by_kind}


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for kind, marker in (("invoice", "o"), ("statement", "s"), ("person", "^")):
        group = [r for r in rows if r["schema"] == kind]
        ax.scatter([r["items"] for r in group], [r["recall"] for r in group], marker=marker, label=f"{kind} recall")
        ax.scatter([r["items"] for r in group], [r["precision"] for r in group], marker=marker, facecolors="none",
                   edgecolors="k", label=f"{kind} precision")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("items in the document")
    ax.set_ylabel("rate")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description="long-document recall and precision")
    parser.add_argument("--engine", default="local", choices=engine_names())
    parser.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ids", help="comma-separated document ids (default: all 22)")
    parser.add_argument("--chunk-tokens", type=int, default=None)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--grounded-decoding", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--stream", action="store_true",
                        help="through Extractor.astream: also the time to the first streamed event of each document")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dump", type=Path, help="append each document's missed and extra items here (JSONL)")
    args = parser.parse_args()
    docs = list(documents())
    if args.ids:
        wanted = args.ids.split(",")
        docs = [d for d in docs if d["id"] in wanted]
    options: dict[str, Any] = {"passes": args.passes}
    if args.chunk_tokens:
        options["chunk_tokens"] = args.chunk_tokens
    if args.grounded_decoding is not None:
        options["grounded_decoding"] = args.grounded_decoding
    started = time.perf_counter()
    with Extractor(args.engine, **parse_options(args.engine_option)) as extractor:
        rows = asyncio.run(run(extractor, docs, options, stream=args.stream, dump=args.dump))
        model = extractor.engine.model
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"eval_long_{args.engine.replace('-', '_')}{'_stream' if args.stream else ''}"
    report = {"engine": args.engine, "model": model, "options": options, "seconds": round(time.perf_counter() - started, 1),
              "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
              **summary(rows), "documents": rows}
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, args.out / f"{name}.png", f"long documents, {args.engine} ({model})")
    print(json.dumps({k: report[k] for k in ("overall", "by_kind")}, indent=1))


if __name__ == "__main__":
    main()
