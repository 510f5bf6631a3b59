"""Schema coverage on JSONSchemaBench (dev): accepted schemas, grammar conformance, compile time.

For every schema of ``jsonschemabench-dev.jsonl``:

- *accepted*: `prepare_schema` takes it and at least one grammar backend compiles it;
- *conformance* (per backend, no model): each ``valid: true`` instance, written as the engine
  writes JSON (compact, keys in the schema's order, wrapped for a wrapped root), must be accepted
  by the compiled grammar; each ``valid: false`` instance that breaks a keyword the report says
  the grammar enforces (and the backend does not leave unenforced) must be refused;
- *compile time* per backend: p50 and p99 over the accepted schemas.

Run: ``python bench_schema_coverage.py [--data PATH] [--out PATH] [--limit N] [--group G]``.
Writes the figures (and every failure, by cause) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Final

import jsonschema

from extractor.contracts.prepare import PreparedSchema, SchemaRefused, prepare_schema
from extractor.engines.grammar_backends import BACKENDS, BackendName, BackendRefused, Compiled, GrammarBackends

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the bench package, run as a script
    sys.path.insert(0, str(ROOT))
from bench.shared_data import shared_data  # noqa: E402

DATA = shared_data("jsonschemabench-dev.jsonl")
OUT = ROOT / "bench" / "results" / "schema_coverage.json"

#: keywords whose errors a grammar never has to explain (their sub-errors are not the grammar's)
_VALIDATED_CONTEXT = frozenset({"not", "if", "then", "else", "dependencies", "dependentSchemas", "dependentRequired",
                                "contains", "propertyNames", "unevaluatedProperties", "unevaluatedItems"})
_NAME_SLOTS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
                         "dependencies"})


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`, or None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))], 2)


def original_validator(schema: Any) -> Any:
    """A validator of the user's own schema, in its declared draft (2020-12 when none)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


# -- writing an instance as the engine would ----------------------------------------------------------


def _fits(branch: dict[str, Any], value: Any, defs: dict[str, Any]) -> bool:
    try:
        return bool(jsonschema.Draft202012Validator({**branch, "$defs": defs}).is_valid(value))
    except Exception:
        return False


def in_schema_order(node: Any, value: Any, defs: dict[str, Any]) -> Any:
    """`value` with object keys in the order the grammar writes them (declared properties first,
    in the schema's order) and integral floats written as integers where the schema says integer."""
    if not isinstance(node, dict):
        return value
    if "$ref" in node:
        return in_schema_order(defs.get(node["$ref"].rsplit("/", 1)[-1]), value, defs)
    if "anyOf" in node:
        for branch in node["anyOf"]:
            if _fits(branch, value, defs):
                return in_schema_order(branch, value, defs)
        return value
    types = node.get("type")
    if isinstance(value, float) and value.is_integer() and (types == "integer" or (
            isinstance(types, list) and "integer" in types)):
        return int(value)
    if isinstance(value, dict):
        props: dict[str, Any] = node.get("properties", {})
        ordered = [k for k in props if k in value] + [k for k in value if k not in props]
        out = {}
        for k in ordered:
            sub = props.get(k)
            if sub is None:
                import re

                pats = [s for p, s in node.get("patternProperties", {}).items() if re.search(p, k)]
                sub = pats[0] if pats else node.get("additionalProperties")
            out[k] = in_schema_order(sub, value[k], defs)
        return out
    if isinstance(value, list):
        prefix = node.get("prefixItems", [])
        return [in_schema_order(prefix[i] if i < len(prefix) else node.get("items"), v, defs)
                for i, v in enumerate(value)]
    return value


# -- which refusals the report promises -----------------------------------------------------------------


def _keyword_of(error: Any) -> str:
    if error.validator == "format":
        return f"format:{error.validator_value}"
    return str(error.validator)


def _path_is_enforced(schema_path: Any, validated: set[str]) -> bool:
    parts = list(schema_path)
    i = 0
    while i < len(parts):
        part = parts[i]
        if part in _NAME_SLOTS:
            if part in validated:  # values under patternProperties where the backend folds them away
                return False
            i += 2
            continue
        if isinstance(part, str) and (part in _VALIDATED_CONTEXT or (part in validated and part != "oneOf")):
            return False
        i += 1
    return True


def enforced_error(error: Any, prepared: PreparedSchema, unenforced: frozenset[str]) -> bool:
    """Whether the report says the grammar refuses a value with this validation error."""
    report = prepared.report
    if not _path_is_enforced(list(error.schema_path)[:-1], set(report.validated) | set(unenforced)):
        return False
    if error.validator in ("anyOf", "oneOf"):
        if error.validator == "oneOf" and "valid under each" in error.message:
            return False
        branches: dict[Any, list[Any]] = defaultdict(list)
        for sub in error.context or []:
            branches[sub.relative_schema_path[0]].append(sub)
        count = len(error.validator_value) if isinstance(error.validator_value, list) else 0
        return bool(branches) and len(branches) == count and all(
            any(enforced_error(sub, prepared, unenforced) for sub in subs) for subs in branches.values())
    keyword = _keyword_of(error)
    return report.fully_enforced(keyword) and keyword not in unenforced


# -- the run -------------------------------------------------------------------------------------------------

_BACKENDS: GrammarBackends | None = None


#: set to "1" by `--close-declared` (read in the worker processes): measure the decoding grammar,
#: whose objects that declare properties and leave `additionalProperties` out are closed
CLOSE_DECLARED_ENV: Final = "SCHEMA_COVERAGE_CLOSE_DECLARED"


def closing_declared() -> bool:
    return os.environ.get(CLOSE_DECLARED_ENV) == "1"


def evaluate(row: dict[str, Any], only: BackendName) -> dict[str, Any]:
    """Everything measured on one schema with one backend (run in that backend's worker process)."""
    global _BACKENDS
    if _BACKENDS is None:
        _BACKENDS = GrammarBackends()
    backends = _BACKENDS
    out: dict[str, Any] = {"id": row["id"], "group": row["group"], "counts": {b: {} for b in BACKENDS},
                           "compile_ms": {}, "misses": {b: [] for b in BACKENDS}, "backend_refusals": {}}
    t0 = time.perf_counter()
    try:
        prepared = prepare_schema(row["schema"], close_declared=closing_declared())
    except SchemaRefused as exc:
        out["refusal"] = {"stage": "prepare", "path": exc.path, "reason": exc.reason}
        return out
    except Exception as exc:
        out["refusal"] = {"stage": "crash", "reason": f"{type(exc).__name__}: {exc}"}
        return out
    out["prepare_ms"] = (time.perf_counter() - t0) * 1000
    out["report"] = prepared.report.as_dict()
    results: dict[BackendName, Compiled | BackendRefused] = {}
    try:
        results[only] = backends.compile(prepared.schema, only)
    except BackendRefused as exc:
        results[only] = exc
    ok = {b: r for b, r in results.items() if isinstance(r, Compiled)}
    for b, r in results.items():
        if isinstance(r, BackendRefused):
            out["backend_refusals"][b] = r.message[:300]
        else:
            out["compile_ms"][b] = r.compile_ms
    if not ok:
        out["refusal"] = {"stage": "backends", "reason": "; ".join(str(r) for r in results.values())[:500]}
        return out
    out["unenforced"] = sorted(ok[only].unenforced) if only in ok else []
    validator = original_validator(row["schema"])
    defs = prepared.schema.get("$defs", {})
    for test in row["tests"]:
        data_ = test["data"]
        text = backends.dumps(in_schema_order(prepared.schema, prepared.wrap(data_), defs))
        errors = [] if test["valid"] else list(validator.iter_errors(data_))
        for b, compiled in ok.items():
            c: dict[str, int] = out["counts"][b]

            def bump(key: str) -> None:
                c[key] = c.get(key, 0) + 1  # noqa: B023 - used right away

            if test["valid"]:
                bump("valid")
                if backends.accepts(compiled, text):
                    bump("valid_accepted")
                else:
                    out["misses"][b].append({"id": row["id"], "kind": "valid refused", "text": text[:300]})
                continue
            if not errors:  # labelled invalid, but jsonschema finds it valid (format or draft nuance)
                bump("invalid_unconfirmed")
            elif not any(enforced_error(e, prepared, compiled.unenforced) for e in errors):
                bump("invalid_not_enforced")
            else:
                bump("invalid_enforced")
                if backends.accepts(compiled, text):
                    out["misses"][b].append({"id": row["id"], "kind": "invalid accepted", "text": text[:300],
                                             "errors": [f"{_keyword_of(e)}: {e.message[:120]}" for e in errors[:3]]})
                else:
                    bump("invalid_refused")
    return out


def _worker(conn: Any) -> None:
    global _BACKENDS
    _BACKENDS = GrammarBackends()  # before "ready": the compile budget never pays for the tokenizer load
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(evaluate(*job))


class _Pool:
    """One worker process; a schema that runs past `timeout_s` kills it (a fresh one takes over)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.proc: Any = None
        self.conn: Any = None

    def run(self, row: dict[str, Any], backend: BackendName) -> dict[str, Any]:
        import multiprocessing as mp

        if self.proc is None:
            ctx = mp.get_context("spawn")
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
            self.proc.start()
            if not self.conn.poll(300):
                raise RuntimeError("the bench worker did not start within 300 s")
            self.conn.recv()
        self.conn.send((row, backend))
        if self.conn.poll(self.timeout_s):
            result: dict[str, Any] = self.conn.recv()
            return result
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return {"id": row["id"], "group": row["group"], "backend_refusals": {
            backend: f"compile budget: compiling and testing took longer than {self.timeout_s:.0f}s"}}

    def close(self) -> None:
        if self.proc is not None:
            self.conn.send(None)
            self.proc.join(5)


def merge(row: dict[str, Any], per_backend: dict[BackendName, dict[str, Any]]) -> dict[str, Any]:
    """One schema's figures from each backend's worker: accepted when preparation takes it and at
    least one backend compiles it within the budget; the chosen backend is the one compiling it
    that leaves the fewest keywords unenforced (xgrammar on ties: the engines' grammar)."""
    out: dict[str, Any] = {"id": row["id"], "group": row["group"], "counts": {}, "compile_ms": {}, "misses": {},
                           "backend_refusals": {}}
    for b, r in per_backend.items():
        for key in ("counts", "misses"):
            if b in r.get(key, {}):
                out[key][b] = r[key][b]
        for key in ("compile_ms", "backend_refusals"):
            if b in r.get(key, {}):
                out[key][b] = r[key][b]
        for key in ("prepare_ms", "report"):
            if key in r:
                out[key] = r[key]
        if r.get("refusal", {}).get("stage") in ("prepare", "crash"):
            out["refusal"] = r["refusal"]
            return out
    ok = [b for b in BACKENDS if b in out["compile_ms"] and b not in out["backend_refusals"]]
    if not ok:
        out["refusal"] = {"stage": "backends", "reason": "; ".join(
            f"{b}: {m}" for b, m in out["backend_refusals"].items())[:500]}
        return out
    out["chosen"] = min(ok, key=lambda b: (len(per_backend[b].get("unenforced", [])), BACKENDS.index(b)))
    return out


def run(data: Path, out: Path, limit: int | None, group: str | None, timeout_s: float | None = None) -> dict[str, Any]:
    """Measure every schema of `data` and write the figures to `out`."""
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    if group:
        rows = [r for r in rows if r["group"] == group]
    rows = rows[:limit] if limit else rows
    pools = {b: _Pool(timeout_s or 10.0) for b in BACKENDS}
    per_group: dict[str, Counter[str]] = defaultdict(Counter)
    refusals: list[dict[str, Any]] = []
    compile_ms: dict[BackendName, list[float]] = {b: [] for b in BACKENDS}
    prepare_ms: list[float] = []
    counts: dict[BackendName, Counter[str]] = {b: Counter() for b in BACKENDS}
    chosen: Counter[str] = Counter()
    misses: dict[BackendName, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
    backend_refusals: dict[BackendName, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
    keyword_classes: dict[str, Counter[str]] = {"enforced": Counter(), "validated": Counter(), "ignored": Counter()}
    started = time.perf_counter()
    try:
        for n, row in enumerate(rows):
            t_row = time.perf_counter()
            r = merge(row, {b: pools[b].run(row, b) for b in BACKENDS})
            if time.perf_counter() - t_row > 10:
                print(f"slow: {row['id']} {time.perf_counter() - t_row:.0f}s", file=sys.stderr)
            g = row["group"]
            per_group[g]["schemas"] += 1
            if "prepare_ms" in r:
                prepare_ms.append(r["prepare_ms"])
            for cls in keyword_classes:
                keyword_classes[cls].update(r.get("report", {}).get(cls, []))
            for b in BACKENDS:
                if b in r.get("compile_ms", {}):
                    compile_ms[b].append(r["compile_ms"][b])
                if b in r.get("backend_refusals", {}):
                    backend_refusals[b].append({"id": row["id"], "reason": r["backend_refusals"][b]})
                counts[b].update(r.get("counts", {}).get(b, {}))
                misses[b].extend(r.get("misses", {}).get(b, []))
            if "refusal" in r:
                refusals.append({"id": row["id"], "group": g, **r["refusal"]})
                continue
            per_group[g]["accepted"] += 1
            chosen[r["chosen"]] += 1
            if (n + 1) % 50 == 0:
                print(f"{n + 1}/{len(rows)} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    finally:
        for pool in pools.values():
            pool.close()

    total = sum(c["schemas"] for c in per_group.values())
    accepted = sum(c["accepted"] for c in per_group.values())
    result: dict[str, Any] = {
        "data": str(data),
        "schemas": total,
        "accepted": accepted,
        "accepted_pct": round(100 * accepted / total, 2) if total else None,
        "per_group": {g: {**c, "accepted_pct": round(100 * c["accepted"] / c["schemas"], 1)}
                      for g, c in sorted(per_group.items())},
        "backends": {},
        "chosen_backend": dict(chosen),
        "prepare_ms": {"p50": percentile(prepare_ms, 50), "p99": percentile(prepare_ms, 99)},
        "refusals_by_cause": dict(Counter(f"{r['stage']}: {r['reason'][:70]}" for r in refusals).most_common()),
        "refusals": refusals[:60],
        "keyword_classes": {k: dict(v.most_common(40)) for k, v in keyword_classes.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "grammar": "decoding (declared objects closed)" if closing_declared() else "contract",
    }
    for b in BACKENDS:
        c = counts[b]
        result["backends"][b] = {
            "compiled": len(compile_ms[b]),
            "refused": len(backend_refusals[b]),
            "compile_ms": {"p50": percentile(compile_ms[b], 50), "p99": percentile(compile_ms[b], 99),
                           "mean": round(statistics.fmean(compile_ms[b]), 2) if compile_ms[b] else None},
            "valid_instances": c["valid"],
            "valid_accepted": c["valid_accepted"],
            "valid_accepted_pct": round(100 * c["valid_accepted"] / c["valid"], 2) if c["valid"] else None,
            "invalid_instances_enforced": c["invalid_enforced"],
            "invalid_refused": c["invalid_refused"],
            "invalid_refused_pct": round(100 * c["invalid_refused"] / c["invalid_enforced"], 2)
            if c["invalid_enforced"] else None,
            "invalid_not_enforced": c["invalid_not_enforced"],
            "invalid_unconfirmed_by_jsonschema": c["invalid_unconfirmed"],
            "misses": misses[b][:20],
            "refusals": backend_refusals[b][:40],
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    plot(result, out.with_suffix(".png"))
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Accepted share per group, and each backend's compile p50/p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(result["per_group"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    a.bar(groups, [result["per_group"][g]["accepted_pct"] for g in groups], color="tab:blue")
    a.axhline(95, color="tab:red", linestyle="--", label="target 95%")
    a.set_ylabel("schemas accepted (%)")
    a.set_title(f"accepted {result['accepted_pct']}% of {result['schemas']} (jsonschemabench-dev)")
    a.tick_params(axis="x", rotation=60)
    a.legend(loc="lower left")
    names = list(result["backends"])
    for i, q in enumerate(("p50", "p99")):
        b.bar([x + i * 0.4 for x in range(len(names))],
              [result["backends"][n]["compile_ms"][q] or 0 for n in names], width=0.4, label=q)
    b.set_xticks([x + 0.2 for x in range(len(names))], names)
    b.set_yscale("log")
    b.set_ylabel("compile ms")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line entry: run the benchmark and print the headline figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--group", default=None)
    parser.add_argument("--timeout", type=float, default=None,
                        help="run each schema in a worker process killed past this many seconds")
    parser.add_argument("--close-declared", action="store_true",
                        help="the decoding grammar (the default of extraction: declared objects closed), not the "
                             "contract's; written to schema_coverage_closed.json unless --out says otherwise")
    args = parser.parse_args(argv)
    if args.close_declared:
        os.environ[CLOSE_DECLARED_ENV] = "1"
        if args.out == OUT:
            args.out = OUT.with_name("schema_coverage_closed.json")
    r = run(args.data, args.out, args.limit, args.group, args.timeout)
    print(json.dumps({"accepted_pct": r["accepted_pct"], "per_group": {g: v["accepted_pct"] for g, v in
                                                                        r["per_group"].items()},
                      "chosen": r["chosen_backend"], "refusals_by_cause": r["refusals_by_cause"],
                      "backends": {b: {k: v for k, v in d.items() if k not in ("misses", "refusals")}
                                   for b, d in r["backends"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
