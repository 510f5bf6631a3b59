"""Scoring extracted records against labeled ones: normalisation by type, then per-field counts.

Pure functions, no I/O. The field types come from the task's strict JSON schema (`spec_from_schema`),
so any schema scores the same way, a raw JSON Schema file included.

Fields and their paths
    Every property is a field, named by its path: `name`, `salary_range.minimum` (a property of a
    nested object), `line_items[].unit_price` (a property of the objects in a list). An object-valued
    field is also scored whole (`salary_range`), and a list is scored item by item (`line_items`, `skills`).

Normalisation (`values_equal`)
    strings      Unicode NFKC, case-folded, runs of whitespace collapsed, ends stripped
    enums        as strings
    dates        `format: date` / `date-time`: compared as ISO dates (`2024-05-14`, `2024-05-14T10:00`
                 and `20240514` are one date); a value that is no ISO date is compared as a string
    numbers      equal within `Tolerance`: |a - b| <= max(absolute, relative * max(|a|, |b|));
                 a numeric string ("12.50") counts as its number
    booleans     as is
    objects      equal when every property is equal
    lists        as multisets, matched item by item (below); lists of scalars as sets (duplicates dropped)
    null         an empty or all-whitespace string, and for lists an empty list, count as null

Partial labels
    A top-level field missing from `expected` is unlabeled: it is not scored for that document (no
    counts, and the document does not count in the field's `docs` or exact match). An explicit
    `null` is a label: "the document does not give this field".

Counts for one field of one document (`score_record`)
    expected null,  predicted null        nothing counted (a true negative); exact
    expected null,  predicted a value     FP  (a value invented: hurts precision)
    expected value, predicted null        FN  (a value missed: hurts recall)
    expected value, predicted equal       TP
    expected value, predicted other       FP + FN (a wrong value is both an invented and a missed one)
    lists: the expected and predicted items are paired one to one by an optimal assignment (the
    Hungarian method) that maximises the number of equal scalar sub-fields, ties going to the pairing
    with more wholly equal items. At the list's own path, TP = pairs whose items are equal, FP = predicted
    items - TP, FN = expected items - TP. Each sub-field is then scored over the pairs with the rules
    above; an unpaired expected item counts FN, an unpaired predicted item FP, for each of its non-null
    sub-fields.
    A document with no valid output (every attempt failed) counts FN for every expected value and is
    exact on no field.
    Besides: `absent` counts the labeled nulls (expected null, or an empty list) and `invented` those
    of them with a value predicted, so `invented / absent` is the rate of values made up where the
    document gives none.

Metrics over a data set (`FieldStats`, micro-averaged over documents)
    precision = TP / (TP + FP), and 1.0 when nothing was predicted (TP + FP = 0: nothing wrong was said)
    recall    = TP / (TP + FN), and 1.0 when nothing was expected (TP + FN = 0: nothing to find)
    F1        = 2PR / (P + R), and 0.0 when P + R = 0
    exact match = share of documents whose value of this field contributes no FP and no FN
    `support` = TP + FN (expected values) and `predicted` = TP + FP are reported alongside, so a
    vacuous 1.0 can be told from a measured one.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extractor.contracts.schema_walk import resolve_ref

#: how a list's path names the items' sub-fields: `line_items` -> `line_items[].unit_price`
ITEM_SUFFIX = "[]"


@dataclass(frozen=True)
class Tolerance:
    """Numbers are equal when |a - b| <= max(absolute, relative * max(|a|, |b|))."""

    absolute: float = 0.005
    relative: float = 0.0


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class Spec:
    """A field's type as far as scoring needs it.

    kind: "string", "date", "enum", "number", "integer", "boolean", "object", "array" or "any".
    """

    kind: str
    nullable: bool = False
    children: Mapping[str, Spec] = field(default_factory=dict)
    item: Spec | None = None

    @property
    def scalar(self) -> bool:
        return self.kind not in ("object", "array")


# --- the type tree from a strict JSON schema ---------------------------------------------------

def spec_from_schema(schema: Mapping[str, Any]) -> Spec:
    """The `Spec` tree of a (strict) JSON schema, `$ref`s into `$defs` resolved."""
    return _spec(schema, schema, depth=0)


def _spec(node: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> Spec:  # defs: the root schema
    if depth > 32:
        return Spec("any")
    node = resolve_ref(node, defs)
    nullable = False
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches = [resolve_ref(b, defs) for b in node[key]]
            real = [b for b in branches if b.get("type") != "null"]
            nullable = len(real) < len(branches)
            if len(real) == 1:
                inner = _spec(real[0], defs, depth + 1)
                return Spec(inner.kind, True if nullable else inner.nullable, inner.children, inner.item)
            return Spec("any", nullable)
    kind = node.get("type")
    if isinstance(kind, list):
        real_types = [t for t in kind if t != "null"]
        nullable = len(real_types) < len(kind)
        kind = real_types[0] if len(real_types) == 1 else None
    if "enum" in node and all(isinstance(v, str) or v is None for v in node["enum"]):
        return Spec("enum", nullable or None in node["enum"])
    if kind == "object" or "properties" in node:
        children = {name: _spec(sub, defs, depth + 1) for name, sub in node.get("properties", {}).items()}
        return Spec("object", nullable, children)
    if kind == "array":
        items = node.get("items")
        return Spec("array", nullable, item=_spec(items, defs, depth + 1) if isinstance(items, Mapping) else Spec("any"))
    if kind == "string":
        fmt = node.get("format")
        return Spec("date" if fmt in ("date", "date-time") else "string", nullable)
    if kind in ("number", "integer", "boolean"):
        return Spec(str(kind), nullable)
    return Spec("any", nullable)


def field_paths(spec: Spec, prefix: str = "") -> list[str]:
    """Every scored path of a record, parents before their sub-fields, in schema order."""
    out: list[str] = []
    if spec.kind == "object":
        if prefix:
            out.append(prefix)
        for name, child in spec.children.items():
            out.extend(field_paths(child, _join(prefix, name)))
    elif spec.kind == "array":
        out.append(prefix)
        if spec.item is not None and spec.item.kind == "object":
            for name, child in spec.item.children.items():
                out.extend(field_paths(child, _join(prefix + ITEM_SUFFIX, name)))
    else:
        out.append(prefix)
    return out


def top_level_fields(spec: Spec) -> list[str]:
    return list(spec.children) if spec.kind == "object" else [""]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --- normalisation ------------------------------------------------------------------------------

_SPACE = re.compile(r"\s+")


def normalize_string(value: Any) -> str:
    """Case and whitespace do not count: NFKC, case-folded, whitespace runs collapsed, stripped."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def normalize_date(value: Any) -> str | None:
    """An ISO date `YYYY-MM-DD` for an ISO date or date-time (basic forms included), else None."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).date().isoformat()
    except ValueError:
        return None


def as_number(value: Any) -> float | None:
    """A number for an int, a float or a numeric string ("1,234.50" included); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip().replace(",", "").replace("_", ""))
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def numbers_equal(a: float, b: float, tolerance: Tolerance) -> bool:
    return abs(a - b) <= max(tolerance.absolute, tolerance.relative * max(abs(a), abs(b)))


def is_null(value: Any) -> bool:
    """None, an all-whitespace string and an empty list or object carry no value."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | dict):
        return len(value) == 0
    return False


def values_equal(expected: Any, predicted: Any, spec: Spec, tolerance: Tolerance = DEFAULT_TOLERANCE) -> bool:
    """Whether two values of one field are the same after normalisation by the field's type."""
    if is_null(expected) or is_null(predicted):
        return is_null(expected) and is_null(predicted)
    kind = spec.kind
    if kind in ("number", "integer"):
        a, b = as_number(expected), as_number(predicted)
        return a is not None and b is not None and numbers_equal(a, b, tolerance)
    if kind == "date":
        a_date, b_date = normalize_date(expected), normalize_date(predicted)
        if a_date is not None and b_date is not None:
            return a_date == b_date
        return normalize_string(expected) == normalize_string(predicted)
    if kind in ("string", "enum"):
        return normalize_string(expected) == normalize_string(predicted)
    if kind == "boolean":
        return bool(expected == predicted)
    if kind == "object":
        if not (isinstance(expected, Mapping) and isinstance(predicted, Mapping)):
            return False
        return all(values_equal(expected.get(k), predicted.get(k), child, tolerance) for k, child in spec.children.items())
    if kind == "array":
        if not (isinstance(expected, Sequence) and isinstance(predicted, Sequence)):
            return False
        item = spec.item or Spec("any")
        exp, pred = _as_items(expected, item, tolerance), _as_items(predicted, item, tolerance)
        if len(exp) != len(pred):
            return False
        pairs = best_pairing(exp, pred, item, tolerance)
        return len(pairs) == len(exp) and all(values_equal(exp[i], pred[j], item, tolerance) for i, j in pairs)
    return bool(_loose(expected) == _loose(predicted))


def _loose(value: Any) -> Any:
    """Untyped values: strings normalised, numbers as floats, recursively."""
    if isinstance(value, str):
        return normalize_string(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _loose(v)) for k, v in value.items() if not is_null(v)))
    if isinstance(value, list | tuple):
        return tuple(sorted((_loose(v) for v in value), key=repr))
    return repr(value)


def _as_items(value: Any, item: Spec, tolerance: Tolerance) -> list[Any]:
    """A list field's items, nulls dropped; a list of scalars as a set (equal items once)."""
    items = [v for v in (value if isinstance(value, list | tuple) else [value]) if not is_null(v)]
    if not item.scalar:
        return items
    unique: list[Any] = []
    for v in items:
        if not any(values_equal(u, v, item, tolerance) for u in unique):
            unique.append(v)
    return unique


# --- pairing list items ------------------------------------------------------------------------

def leaf_matches(expected: Any, predicted: Any, spec: Spec, tolerance: Tolerance = DEFAULT_TOLERANCE) -> int:
    """How many scalar sub-fields of two items are equal and not null (1 or 0 for a scalar item)."""
    if spec.kind == "object":
        if not (isinstance(expected, Mapping) and isinstance(predicted, Mapping)):
            return 0
        return sum(leaf_matches(expected.get(k), predicted.get(k), child, tolerance) for k, child in spec.children.items())
    if is_null(expected) or is_null(predicted):
        return 0
    return int(values_equal(expected, predicted, spec, tolerance))


def best_pairing(expected: Sequence[Any], predicted: Sequence[Any], item: Spec,
                 tolerance: Tolerance = DEFAULT_TOLERANCE) -> list[tuple[int, int]]:
    """The one-to-one pairing of expected and predicted items with the most equal sub-fields
    (ties: the most wholly equal items), as `(expected index, predicted index)` pairs sorted by
    expected index. Pairs with nothing in common are left out."""
    if not expected or not predicted:
        return []
    # lexicographic: equal sub-fields first; a wholly equal pair adds 1, and there are at most
    # len(expected) of those, so they only break ties
    scale = len(expected) + 1
    weight = [[leaf_matches(e, p, item, tolerance) * scale + int(values_equal(e, p, item, tolerance))
               for p in predicted] for e in expected]
    pairs = max_weight_assignment(weight)
    return sorted((i, j) for i, j in pairs if weight[i][j] > 0)


def max_weight_assignment(weight: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Rows paired one to one with columns so that the summed weight is largest (Hungarian method,
    O(n^3)); a rectangular matrix pairs min(rows, cols) of them."""
    rows = len(weight)
    cols = len(weight[0]) if rows else 0
    if rows == 0 or cols == 0:
        return []
    transpose = rows > cols
    matrix = [list(r) for r in zip(*weight, strict=True)] if transpose else [list(r) for r in weight]
    n, m = len(matrix), len(matrix[0])
    top = max(max(r) for r in matrix)
    cost = [[top - v for v in r] for r in matrix]  # minimise cost = maximise weight
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner, way = [0] * (m + 1), [0] * (m + 1)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = [math.inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = owner[j0], math.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    pairs = [(owner[j] - 1, j - 1) for j in range(1, m + 1) if owner[j]]
    return [(j, i) for i, j in pairs] if transpose else pairs


# --- counting -----------------------------------------------------------------------------------

@dataclass
class Counts:
    """One field's counts, for one document or summed over many."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    #: labeled null (the document does not give the field)
    absent: int = 0
    #: labeled null and a value predicted
    invented: int = 0

    def add(self, tp: int = 0, fp: int = 0, fn: int = 0) -> None:
        self.tp += tp
        self.fp += fp
        self.fn += fn

    @property
    def exact(self) -> bool:
        return self.fp == 0 and self.fn == 0


def score_record(expected: Mapping[str, Any], predicted: Mapping[str, Any] | None, spec: Spec,
                 tolerance: Tolerance = DEFAULT_TOLERANCE) -> dict[str, Counts]:
    """Counts per field path for one document: every path of `field_paths(spec)` but those of
    the top-level fields that `expected` leaves out (unlabeled, not scored). `predicted` is None
    when the document has no valid output."""
    out = {path: Counts() for path in field_paths(spec)}
    _score(expected, predicted, spec, "", out, tolerance)
    unlabeled = unlabeled_fields(expected, spec)
    return {path: c for path, c in out.items() if _top_field(path) not in unlabeled}


def unlabeled_fields(expected: Mapping[str, Any], spec: Spec) -> set[str]:
    """The top-level fields of `spec` that the label `expected` does not give (not even as null)."""
    if spec.kind != "object" or not isinstance(expected, Mapping):
        return set()
    return {name for name in spec.children if name not in expected}


def _top_field(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, Mapping) else None


def _score(expected: Any, predicted: Any, spec: Spec, path: str, out: dict[str, Counts], tolerance: Tolerance) -> None:
    if spec.kind == "object":
        if path:
            _score_scalar(expected, predicted, spec, path, out, tolerance)
        for name, child in spec.children.items():
            _score(_get(expected, name), _get(predicted, name), child, _join(path, name), out, tolerance)
    elif spec.kind == "array":
        _score_list(expected, predicted, spec.item or Spec("any"), path, out, tolerance)
    else:
        _score_scalar(expected, predicted, spec, path, out, tolerance)


def _score_scalar(expected: Any, predicted: Any, spec: Spec, path: str, out: dict[str, Counts], tolerance: Tolerance) -> None:
    counts = out.setdefault(path, Counts())
    if is_null(expected):
        counts.absent += 1
        counts.invented += int(not is_null(predicted))
    if is_null(expected) and is_null(predicted):
        return
    if is_null(expected):
        counts.add(fp=1)
    elif is_null(predicted):
        counts.add(fn=1)
    elif values_equal(expected, predicted, spec, tolerance):
        counts.add(tp=1)
    else:
        counts.add(fp=1, fn=1)


def _score_list(expected: Any, predicted: Any, item: Spec, path: str, out: dict[str, Counts], tolerance: Tolerance) -> None:
    exp = _as_items(expected, item, tolerance) if not is_null(expected) else []
    pred = _as_items(predicted, item, tolerance) if not is_null(predicted) else []
    pairs = best_pairing(exp, pred, item, tolerance)
    equal = sum(values_equal(exp[i], pred[j], item, tolerance) for i, j in pairs)
    counts = out.setdefault(path, Counts())
    counts.add(tp=equal, fp=len(pred) - equal, fn=len(exp) - equal)
    if not exp:
        counts.absent += 1
        counts.invented += int(bool(pred))
    if item.kind != "object":
        return
    prefix = path + ITEM_SUFFIX
    paired_e, paired_p = {i for i, _ in pairs}, {j for _, j in pairs}
    for i, j in pairs:
        for name, child in item.children.items():
            _score(_get(exp[i], name), _get(pred[j], name), child, _join(prefix, name), out, tolerance)
    for i in (i for i in range(len(exp)) if i not in paired_e):
        for name, child in item.children.items():
            _score(_get(exp[i], name), None, child, _join(prefix, name), out, tolerance)
    for j in (j for j in range(len(pred)) if j not in paired_p):
        for name, child in item.children.items():
            _score(None, _get(pred[j], name), child, _join(prefix, name), out, tolerance)


# --- aggregation --------------------------------------------------------------------------------

@dataclass
class FieldStats:
    """A field's counts summed over a data set, and its metrics (see the module docstring)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    exact_docs: int = 0
    docs: int = 0
    absent: int = 0
    invented: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def exact_match(self) -> float:
        return self.exact_docs / self.docs if self.docs else 0.0

    @property
    def invented_rate(self) -> float:
        """Share of the labeled nulls that got a value (0.0 when no null was labeled)."""
        return self.invented / self.absent if self.absent else 0.0

    @property
    def support(self) -> int:
        return self.tp + self.fn

    @property
    def predicted(self) -> int:
        return self.tp + self.fp

    def to_dict(self) -> dict[str, Any]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "exact_match": round(self.exact_match, 4), "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "support": self.support, "predicted": self.predicted, "docs": self.docs,
                "absent": self.absent, "invented": self.invented, "invented_rate": round(self.invented_rate, 4)}


def aggregate(per_document: Iterable[tuple[dict[str, Counts], bool]], paths: Sequence[str]) -> dict[str, FieldStats]:
    """Sum per-document counts: items are `(counts by path, valid)`; an invalid document is exact
    on no field; a path missing from a document's counts (unlabeled) is not counted for it."""
    stats = {path: FieldStats() for path in paths}
    for counts, valid in per_document:
        for path in paths:
            c = counts.get(path)
            if c is None:
                continue
            s = stats[path]
            s.tp += c.tp
            s.fp += c.fp
            s.fn += c.fn
            s.absent += c.absent
            s.invented += c.invented
            s.docs += 1
            s.exact_docs += int(valid and c.exact)
    return stats


def micro(stats: Mapping[str, FieldStats], paths: Iterable[str]) -> FieldStats:
    """The counts of several fields summed (micro average over fields)."""
    total = FieldStats()
    for path in paths:
        s = stats[path]
        total.tp += s.tp
        total.fp += s.fp
        total.fn += s.fn
        total.absent += s.absent
        total.invented += s.invented
    return total


def macro_f1(stats: Mapping[str, FieldStats], paths: Iterable[str]) -> float:
    """Mean of the fields' F1 (each field weighs the same)."""
    values = [stats[p].f1 for p in paths]
    return sum(values) / len(values) if values else 0.0


def mismatched_fields(counts: Mapping[str, Counts]) -> list[str]:
    """Paths with an error (an FP or an FN) in one document's counts."""
    return [path for path, c in counts.items() if not c.exact]
