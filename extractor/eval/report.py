"""Evaluation reports: the JSON report of a run, its HTML summary, and A/B comparisons.

`build_report` scores an `EvalRun` (with `eval_metrics`) into one JSON-ready dict:

    schema, version, dataset, engine, model, max_retries, require_grounded, grounded_decoding, tolerance, date
    documents, valid, validity_rate          documents with a valid record / all documents
    attempts {mean, max, retried, total}     attempts used per document (a failed one counts its tries)
    seconds, docs_per_s, tokens {prompt, completion}   tokens of the documents with a valid record only
    fields {path: {precision, recall, f1, exact_match, tp, fp, fn, support, predicted, docs,
                   absent, invented, invented_rate, copied}}
        docs: documents that label the field; absent: labeled nulls; invented: values predicted
        where the label is null; copied: values equal to a few-shot example's value that the
        document does not contain (`extractor.eval.leaks`)
    summary {macro_f1, micro {precision, recall, f1}, document_exact_match, fields_right,
             absent, invented, invented_rate, copied}   over the top-level fields
        fields_right: share of the labeled (document, field) pairs that are exactly right
    per_document [{id, valid, exact, attempts, mismatched, copied, error, expected, predicted}]

`write_report` writes it and an HTML page of the same name next to it (`report.json` ->
`report.html`). `compare_reports(a, b)` gives per-field deltas (B - A) for an A/B of prompts,
models or engines; `format_comparison` prints them as a table.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

from extractor.errors import DocumentError
from extractor.eval.leaks import leak_field, leaks
from extractor.eval.metrics import (
    DEFAULT_TOLERANCE,
    Counts,
    Tolerance,
    aggregate,
    field_paths,
    macro_f1,
    micro,
    mismatched_fields,
    score_record,
    spec_from_schema,
    top_level_fields,
    unlabeled_fields,
)
from extractor.eval.run import EvalRun

REPORT_KIND = "extractor-eval"
METRICS = ("f1", "precision", "recall", "exact_match")
#: what names a run in a comparison
RUN_KEYS = ("schema", "dataset", "engine", "model", "max_retries", "require_grounded", "grounded_decoding", "date")


def build_report(run: EvalRun, tolerance: Tolerance = DEFAULT_TOLERANCE) -> dict[str, Any]:
    spec = spec_from_schema(run.task.strict_schema)
    paths = field_paths(spec)
    top = top_level_fields(spec)
    scored: list[tuple[dict[str, Counts], bool]] = [
        (score_record(o.expected, o.predicted, spec, tolerance), o.valid) for o in run.outcomes]
    stats = aggregate(scored, paths)
    n = len(run.outcomes)
    valid = sum(o.valid for o in run.outcomes)
    attempts = [o.attempts for o in run.outcomes]
    overall = micro(stats, top)
    per_document = []
    exact_docs = 0
    copied = {path: 0 for path in paths}
    for o, (counts, ok) in zip(run.outcomes, scored, strict=True):
        wrong = mismatched_fields(counts)
        exact = ok and not any(p in top for p in wrong)
        exact_docs += exact
        unlabeled = unlabeled_fields(o.expected, spec)
        found = leaks(run.task.examples, o.predicted, o.text, o.expected) if o.predicted else []
        for leak in found:
            field = leak_field(leak.path)
            copied[field] = copied.get(field, 0) + 1
        per_document.append({"id": o.id, "valid": o.valid, "exact": exact, "attempts": o.attempts,
                             "mismatched": wrong if ok else [f for f in top if f not in unlabeled],
                             "copied": [leak.path for leak in found], "error": o.error,
                             "expected": o.expected, "predicted": o.predicted})
    labeled = sum(stats[f].docs for f in top)
    right = sum(stats[f].exact_docs for f in top)
    return {
        "kind": REPORT_KIND,
        "schema": run.task.name,
        "version": run.task.version,
        "dataset": run.dataset,
        "engine": run.engine,
        "model": run.model,
        "max_retries": run.max_retries,
        "require_grounded": run.require_grounded,
        "grounded_decoding": run.grounded_decoding,
        "tolerance": {"absolute": tolerance.absolute, "relative": tolerance.relative},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "documents": n,
        "valid": valid,
        "validity_rate": round(valid / n, 4) if n else 0.0,
        "attempts": {"mean": round(sum(attempts) / n, 3) if n else 0.0, "max": max(attempts, default=0),
                     "retried": sum(a > 1 for a in attempts), "total": sum(attempts)},
        "seconds": round(run.seconds, 2),
        "docs_per_s": round(n / run.seconds, 3) if run.seconds > 0 else None,
        "tokens": {"prompt": sum(o.prompt_tokens for o in run.outcomes),
                   "completion": sum(o.completion_tokens for o in run.outcomes)},
        "fields": {path: {**stats[path].to_dict(), "copied": copied.get(path, 0)} for path in paths},
        "top_level_fields": top,
        "summary": {"macro_f1": round(macro_f1(stats, top), 4),
                    "micro": {"precision": round(overall.precision, 4), "recall": round(overall.recall, 4),
                              "f1": round(overall.f1, 4)},
                    "document_exact_match": round(exact_docs / n, 4) if n else 0.0,
                    "fields_right": round(right / labeled, 4) if labeled else 0.0,
                    "absent": overall.absent, "invented": overall.invented,
                    "invented_rate": round(overall.invented_rate, 4),
                    "copied": sum(copied.get(f, 0) for f in top)},
        "per_document": per_document,
    }


def html_path_for(json_path: str | Path) -> Path:
    p = Path(json_path)
    return p.with_suffix(".html") if p.suffix else p.with_name(p.name + ".html")


def write_report(report: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Write the JSON report to `path` and its HTML summary next to it; both paths returned."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    page = html_path_for(p)
    page.write_text(render_html(report), encoding="utf-8")
    return p, page


def load_report(path: str | Path) -> dict[str, Any]:
    """A report written by `write_report`; `DocumentError` when the file is not one."""
    p = Path(path)
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DocumentError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DocumentError(f"{p}: not a JSON report: {exc}") from exc
    if not isinstance(report, dict) or report.get("kind") != REPORT_KIND or not isinstance(report.get("fields"), dict):
        raise DocumentError(f"{p}: not an evaluation report (written by `extract eval -o`)")
    return report


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#1d1d1f;max-width:1100px}
h1{font-size:1.4em;margin-bottom:.2em} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1em 0} th,td{padding:.3em .7em;border-bottom:1px solid #e3e3e3;text-align:right}
th:first-child,td:first-child{text-align:left;font-family:ui-monospace,monospace}
.bar{display:inline-block;height:.7em;background:#4c72b0;vertical-align:middle;margin-right:.4em}
.low{background:#c44e52} .mid{background:#dd8452}
.cards{display:flex;gap:1em;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:1.3em} pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}
details{margin:.3em 0} summary{cursor:pointer} .err{color:#c44e52}
"""


def _bar(value: float) -> str:
    cls = "bar low" if value < 0.5 else "bar mid" if value < 0.8 else "bar"
    return f'<span class="{cls}" style="width:{round(value * 80)}px"></span>{value:.3f}'


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: the run's figures, a per-field table, and each document that
    was not exactly right, with its expected and predicted records."""
    e = html.escape
    summary = report["summary"]
    cards = [("documents", report["documents"]), ("validity rate", f"{report['validity_rate']:.3f}"),
             ("macro F1", f"{summary['macro_f1']:.3f}"), ("micro F1", f"{summary['micro']['f1']:.3f}"),
             ("documents exact", f"{summary['document_exact_match']:.3f}"),
             ("mean attempts", report["attempts"]["mean"]), ("docs/s", report["docs_per_s"])]
    top = set(report.get("top_level_fields", []))
    rows = []
    for path, s in report["fields"].items():
        name = f"<b>{e(path)}</b>" if path in top else e(path)
        rows.append(f"<tr><td>{name}</td><td>{_bar(s['f1'])}</td><td>{s['precision']:.3f}</td><td>{s['recall']:.3f}</td>"
                    f"<td>{s['exact_match']:.3f}</td><td>{s['tp']}</td><td>{s['fp']}</td><td>{s['fn']}</td>"
                    f"<td>{s['support']}</td><td>{s.get('invented', 0)}/{s.get('absent', 0)}</td>"
                    f"<td>{s.get('copied', 0)}</td></tr>")
    wrong = [d for d in report.get("per_document", []) if not d["exact"]]
    docs = []
    for d in wrong:
        label = f"{e(str(d['id']))}: " + (f'<span class="err">failed ({e(d["error"]["type"])})</span>' if d["error"]
                                          else "wrong: " + e(", ".join(d["mismatched"])))
        body = (f"<p class=err>{e(d['error']['message'])}</p>" if d["error"] else "")
        body += (f"<p>expected</p><pre>{e(json.dumps(d['expected'], indent=1, ensure_ascii=False))}</pre>"
                 f"<p>predicted</p><pre>{e(json.dumps(d['predicted'], indent=1, ensure_ascii=False))}</pre>")
        docs.append(f"<details><summary>{label}</summary>{body}</details>")
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>eval {e(report['schema'])}: {e(str(report['engine']))}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{e(report['schema'])} v{e(str(report['version']))} on {e(str(report['dataset']))}</h1>\n"
        f"<p class=sub>engine {e(str(report['engine']))}, model {e(str(report['model']))}, "
        f"max retries {e(str(report['max_retries']))}{', require grounded' if report.get('require_grounded') else ''}"
        f"{', grounded decoding' if report.get('grounded_decoding') else ''}, "
        f"{e(str(report['date']))}</p>\n"
        '<div class="cards">' + "".join(f"<div class=card>{e(k)}<b>{e(str(v))}</b></div>" for k, v in cards) + "</div>\n"
        "<h2>Fields</h2><table><tr><th>field</th><th>F1</th><th>precision</th><th>recall</th><th>exact</th>"
        "<th>TP</th><th>FP</th><th>FN</th><th>support</th><th>invented/absent</th><th>copied</th></tr>\n" + "\n".join(rows) + "</table>\n"
        f"<h2>Documents not exactly right ({len(wrong)} of {report['documents']})</h2>\n" + "\n".join(docs) +
        "\n</body></html>\n"
    )


# --- A/B comparison -----------------------------------------------------------------------------

def _summary_figures(report: dict[str, Any]) -> dict[str, float | None]:
    return {"validity_rate": report.get("validity_rate"), "macro_f1": report["summary"]["macro_f1"],
            "micro_f1": report["summary"]["micro"]["f1"], "document_exact_match": report["summary"]["document_exact_match"],
            "mean_attempts": report["attempts"]["mean"], "docs_per_s": report.get("docs_per_s")}


def _delta(a: float | None, b: float | None) -> float | None:
    return round(b - a, 4) if a is not None and b is not None else None


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-field deltas B - A of F1, precision, recall and exact match, and of the run's figures.
    A field of only one report has None for the other's values and for its deltas."""
    fields: dict[str, Any] = {}
    for path in [*a["fields"], *(p for p in b["fields"] if p not in a["fields"])]:
        fa, fb = a["fields"].get(path), b["fields"].get(path)
        fields[path] = {m: {"a": fa[m] if fa else None, "b": fb[m] if fb else None,
                            "delta": _delta(fa[m] if fa else None, fb[m] if fb else None)} for m in METRICS}
    sa, sb = _summary_figures(a), _summary_figures(b)
    notes = [f"{key} differs: {a.get(key)!r} vs {b.get(key)!r}" for key in ("schema", "dataset", "documents")
             if a.get(key) != b.get(key)]
    return {
        "a": {k: a.get(k) for k in RUN_KEYS},
        "b": {k: b.get(k) for k in RUN_KEYS},
        "notes": notes,
        "summary": {k: {"a": sa[k], "b": sb[k], "delta": _delta(sa[k], sb[k])} for k in sa},
        "fields": fields,
    }


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_comparison(cmp: dict[str, Any]) -> str:
    """The comparison as a plain-text table (B - A)."""
    a, b = cmp["a"], cmp["b"]
    lines = [f"{label}: {r['schema']} {r['engine']} {r['model']}{' require-grounded' if r.get('require_grounded') else ''}"
             f"{' grounded-decoding' if r.get('grounded_decoding') else ''} "
             f"({r['dataset']})" for label, r in (("A", a), ("B", b))]
    lines += [f"note: {n}" for n in cmp["notes"]]
    width = max([len(p) for p in cmp["fields"]] + [len(k) for k in cmp["summary"]] + [5])
    lines.append(f"{'field':<{width}}  {'F1 A':>6}  {'F1 B':>6}  {'dF1':>7}  {'dP':>7}  {'dR':>7}  {'dExact':>7}")
    for path, m in cmp["fields"].items():
        lines.append(f"{path:<{width}}  {_fmt(m['f1']['a']):>6}  {_fmt(m['f1']['b']):>6}  {_fmt(m['f1']['delta'], True):>7}  "
                     f"{_fmt(m['precision']['delta'], True):>7}  {_fmt(m['recall']['delta'], True):>7}  "
                     f"{_fmt(m['exact_match']['delta'], True):>7}")
    lines.append(f"{'run':<{width}}  {'A':>6}  {'B':>6}  {'delta':>7}")
    for key, m in cmp["summary"].items():
        lines.append(f"{key:<{width}}  {_fmt(m['a']):>6}  {_fmt(m['b']):>6}  {_fmt(m['delta'], True):>7}")
    return "\n".join(lines)
