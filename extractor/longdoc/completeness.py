"""Is a merged list complete? Checked against what the document itself prints.

- a **count**: "50 items", "Number of items: 50", "Total positions: 50", "3 employees";
- a **total**: where a list's items have number fields and the record a top-level number field
  named like a total, the items' amounts (quantity x price where an item has two numbers, else
  its one number) must add up to it.

Each check is reported (`meta.long.completeness`); a list found short starts a recall pass.
"""

from __future__ import annotations

import re
from typing import Any

_NOUNS = r"(?:line\s+items|items|positions|lines|entries|transactions|records|people|persons|employees|companies|members|rows)"
_COUNT_AFTER = re.compile(rf"\b(\d{{1,5}})\s+{_NOUNS}\b", re.IGNORECASE)
_COUNT_BEFORE = re.compile(rf"\b(?:number\s+of\s+|total\s+|count\s+of\s+)?{_NOUNS}(?:\s+count)?\s*[:#=]\s*(\d{{1,5}})\b",
                           re.IGNORECASE)


def printed_counts(document: str) -> list[int]:
    """The item counts the document prints, in order (empty: it prints none)."""
    found = [(m.start(), int(m.group(1))) for m in _COUNT_AFTER.finditer(document)]
    found += [(m.start(), int(m.group(1))) for m in _COUNT_BEFORE.finditer(document)]
    return [n for _, n in sorted(found) if n > 0]


def _amount(item: Any) -> float | None:
    if not isinstance(item, dict):
        return None
    numbers = [v for v in item.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) == 2:
        return float(numbers[0]) * float(numbers[1])
    return float(numbers[0]) if len(numbers) == 1 else None


def check_list(name: str, items: list[Any], record: dict[str, Any] | None, document: str) -> dict[str, Any]:
    """The completeness report of list `name`: `count` (found), `printed_count` and `sums_to`
    where the document gives them, and `complete` (False only when a check shows items missing)."""
    report: dict[str, Any] = {"field": name, "count": len(items), "complete": True}
    counts = printed_counts(document)
    if counts:
        printed = max(counts, key=lambda n: (abs(n - len(items)) <= 0, -abs(n - len(items))))
        report["printed_count"] = printed
        if len(items) < printed:
            report["complete"] = False
    totals = [v for k, v in (record or {}).items() if "total" in k.lower() and isinstance(v, int | float)
              and not isinstance(v, bool)]
    amounts = [_amount(i) for i in items]
    if totals and items and all(a is not None for a in amounts):
        computed = sum(a for a in amounts if a is not None)
        report["sum"] = round(computed, 2)
        report["printed_total"] = totals[0]
        if abs(computed - totals[0]) > max(0.01, 0.005 * abs(totals[0])):
            report["complete"] = report["complete"] and computed > totals[0]
            report["sums_to_total"] = False
        else:
            report["sums_to_total"] = True
    return report
