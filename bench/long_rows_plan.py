"""What the pipeline alone does for long documents, without a model: on all 22 documents of the
long set (fixtures/long/generate.py), how many of the labelled list items the row plan finds, and
how many of them the grammar of their chunk admits (and fixes outright), and whether the header
view's grounded schema admits the labelled header fields.

    python bench/long_rows_plan.py      -> bench/results/long_rows_plan.json and .png

Per document: `rows` (rows planned), `items` (labelled), `rows_firm`; `admitted`: labelled items
whose row schema (`extractor.grounding.rows.constrain_rows`, as the chunk's engine gets it)
accepts them, row k against item k; `determined`: rows whose schema leaves one value per field (the
model only copies); `header_admitted`: per header field, whether the header view's grounded schema
accepts the labelled value. A model's share comes on top: bench/eval_long.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extractor.contracts.contract import task_from_model  # noqa: E402
from extractor.engines.fake import ScriptedEngine  # noqa: E402
from extractor.grounding.constraint import DEFAULT_BUDGET, build_constraint  # noqa: E402
from extractor.longdoc.run import LongRun  # noqa: E402
from extractor.longdoc.tasks import RECORDS  # noqa: E402
from extractor.pipeline.options import ExtractOptions  # noqa: E402
from fixtures.long.generate import documents  # noqa: E402
from schemas.invoice import Invoice  # noqa: E402
from schemas.person import Person  # noqa: E402
from schemas.statement import Statement  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODELS = {"invoice": Invoice, "statement": Statement, "person": Person}
LISTS = {"invoice": "line_items", "statement": "transactions", "person": RECORDS}


def _single(node: Any, defs: dict[str, Any]) -> bool:
    """Whether a schema node admits exactly one value (an enum of one, a pattern of one literal)."""
    if not isinstance(node, dict):
        return False
    if "$ref" in node:
        return _single(defs.get(node["$ref"].rsplit("/", 1)[1]), defs)
    if "enum" in node:
        return len(node["enum"]) == 1
    if "pattern" in node:
        body = re.sub(r"\\.", "", node["pattern"][1:-1])  # escaped characters are literals
        return not any(c in body for c in "()|?*+[{")
    if node.get("type") == "object":
        return all(_single(v, defs) for v in node.get("properties", {}).values())
    return False


def plan_document(doc: dict[str, Any]) -> dict[str, Any]:
    many = doc["many"]
    task = task_from_model(MODELS[doc["schema"]])
    run = LongRun(ScriptedEngine([]), task, doc["text"], ExtractOptions(many=many, grounded_decoding=True))
    field = LISTS[doc["schema"]]
    labels = doc["label"] if many else doc["label"][field]
    out: dict[str, Any] = {"id": doc["id"], "schema": doc["schema"], "items": len(labels), "plan": "chunks",
                           "rows": 0, "rows_firm": 0, "admitted": 0, "determined": 0, "header_admitted": {}}
    if run.plan is None:
        return out
    rows = list(run.plan.rows)
    out.update(plan="rows", rows=len(rows), rows_firm=sum(r.firm for r in rows),
               chunks=sum(j.role == "rows" for j in run.jobs))
    firm_labels = iter(labels)
    for job in run.jobs:
        if job.role != "rows":
            continue
        schema, _ = run._schema(job)
        assert schema is not None
        defs = schema.get("$defs", {})
        prefix = schema["properties"][field]["prefixItems"]
        for row, node in zip(job.rows, prefix, strict=True):
            if not row.firm:
                continue
            label = next(firm_labels, None)
            if label is None:
                continue
            try:
                jsonschema.validate(label, {**node, "$defs": defs})
                out["admitted"] += 1
            except jsonschema.ValidationError:
                pass
            out["determined"] += _single(node, defs)
    for job in run.jobs:
        if job.role != "header":
            continue
        constraint = build_constraint(job.task.strict_schema, job.piece.text, DEFAULT_BUDGET)
        schema = dict(constraint.schema)
        for name, node in schema.get("properties", {}).items():
            try:
                jsonschema.validate(doc["label"][name], {**node, "$defs": schema.get("$defs", {})})
                out["header_admitted"][name] = True
            except jsonschema.ValidationError:
                out["header_admitted"][name] = False
        out["header_constraint"] = constraint.status
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["rows_firm"] / r["items"] for r in rows], width=0.27, label="firm rows / items")
    ax.bar(list(x), [r["admitted"] / r["items"] for r in rows], width=0.27, label="items admitted by their row")
    ax.bar([i + 0.27 for i in x], [r["determined"] / r["items"] for r in rows], width=0.27,
           label="items fixed by their row's grammar")
    ax.set_xticks(list(x), [r["id"] for r in rows], rotation=70, fontsize=7)
    ax.set_ylim(0, 1.15)
    ax.set_title("long set: what the row plan and its grammar do before any model")
    ax.legend(fontsize=7, loc="upper right", ncols=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description="the row plan over the long set, no model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [plan_document(d) for d in documents()]
    items = sum(r["items"] for r in rows)
    header = [ok for r in rows for ok in r["header_admitted"].values()]
    report = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
              "seconds": round(time.perf_counter() - started, 1),
              "overall": {"documents": len(rows), "planned_by_rows": sum(r["plan"] == "rows" for r in rows),
                          "items": items, "firm_rows": sum(r["rows_firm"] for r in rows),
                          "admitted": round(sum(r["admitted"] for r in rows) / items, 4),
                          "determined": round(sum(r["determined"] for r in rows) / items, 4),
                          "header_admitted": round(sum(header) / len(header), 4) if header else None},
              "documents": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long_rows_plan.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, args.out / "long_rows_plan.png")
    print(json.dumps(report["overall"], indent=1))


if __name__ == "__main__":
    main()
