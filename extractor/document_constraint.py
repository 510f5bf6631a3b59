"""Grounded decoding: a per-document schema whose free-text strings and numbers can only be
values that occur in the document.

`constrain_to_document(strict_schema, document)` returns a copy of the strict schema in which

- every free-text string (type `string`, no `enum`, `const`, `format` or `pattern`) gets an
  `enum` of the document's candidate spans: each line, each cell of a line (cells are split at
  runs of two or more spaces, tabs and ` | `), every run of up to `max_words` words inside a
  cell, with surrounding punctuation trimmed as a variant, and runs of 2 to 4 consecutive whole
  lines joined by a space (and by ", " where a line does not already end with a comma), which
  is how an address printed on several lines is written on one;
- every `number` / `integer` without `enum` or `const` gets an `enum` of the amounts printed in
  the document (`1,234.50`, `1.234,50`, `3,500`, `7.00`, `88k`; both readings where one is
  ambiguous), within the node's `minimum` / `maximum`; inside the items of an array of objects
  with `k` required number fields, only the amounts of lines printing at least `k` amounts (an
  invoice line item's unit price is on its item line, not the total's line). Dates, times, rates
  (`20 %`) and identifiers such as `BR/24/105` are not amounts: their digits are not offered (so a number
  field meant to hold a year printed only inside a date cannot be decoded this way);
- every array gets a `maxItems` the document can fill: an array of objects with `k` required
  number fields at most one item per line, or `;`-separated part of a line, printing `k`
  amounts (an invoice's item line prints its quantity and price), other arrays of
  objects one per non-empty line, arrays of strings one per piece of text (cells, split at
  commas, semicolons, slashes, bullets, sentence ends and "and" / "or"). A small model that
  repeats the last list item until `max_tokens` is stopped by the grammar instead.

Since it is still a JSON schema, the same schema goes to every engine: the grammar (xgrammar on
the CPU, vLLM's guided decoding on the GPU) then makes the model copy a value rather than write
one. Nullable fields keep their `null` branch, so "not in the document" stays expressible.

Limits: a field is left as it was when the document offers no candidate for it (a number field
in a document without numbers), and the candidate list is capped at `max_candidates` by using
shorter word runs, so a long document still compiles in bounded time. A value the document
states only in another form (a date printed as 23.08.2024 for a `format: date` field, an
implied quantity of 1) is not affected: formats and enums are left alone, and an implied number
is not offered.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .grounding import resolve_ref

__all__ = ["candidate_numbers", "candidate_spans", "constrain_to_document"]

MAX_WORDS = 12
MAX_CANDIDATES = 4000
MAX_JOINED_LINES = 4
MAX_DOCUMENT_CHARS = 200_000
#: the `$defs` entry holding the document's spans
SPAN_DEF = "DocumentSpan"

_CELL_SPLIT = re.compile(r"\s{2,}|\t|\s\|\s")
_TRIM = " \t,;:.()[]{}<>\"'*#-\u2013\u2014/\\"
_NUMBER = re.compile(r"(?<![\w.,])[-\u2212]?\d+(?:[.,'\u00a0\u202f]\d+)*(?!\w)")


def _trimmed(text: str) -> str:
    return text.strip(_TRIM)


def _add(out: dict[str, None], value: str) -> None:
    value = value.strip()
    if value:
        out[value] = None


def candidate_spans(document: str, *, max_words: int = MAX_WORDS) -> list[str]:
    """Every span a free-text field may take, in document order, without repeats."""
    out: dict[str, None] = {}
    lines = [line.strip() for line in document.splitlines()]
    for line in lines:
        if not line:
            continue
        _add(out, line)
        _add(out, _trimmed(line))
        for cell in _CELL_SPLIT.split(line):
            words = cell.split()
            for i in range(len(words)):
                for j in range(i + 1, min(len(words), i + max_words) + 1):
                    run = " ".join(words[i:j])
                    _add(out, run)
                    _add(out, _trimmed(run))
    full = [line for line in lines if line]
    for i in range(len(full)):
        for k in range(2, MAX_JOINED_LINES + 1):
            if i + k > len(full):
                break
            group = full[i:i + k]
            _add(out, " ".join(group))
            _add(out, _trimmed(" ".join(group)))
            _add(out, ", ".join(_trimmed(g) for g in group))
    return list(out)


def _readings(token: str) -> list[float]:
    """The values a printed number may mean: `1,234.50` -> 1234.5, `1.234,50` -> 1234.5,
    `3,500` -> 3500 (and 3.5), `7.00` -> 7.0, `2,85` -> 2.85."""
    token = token.replace("\u2212", "-").replace("\u00a0", "'").replace("\u202f", "'")
    sign = -1.0 if token.startswith("-") else 1.0
    token = token.lstrip("-")
    seps = [c for c in token if c in ".,'"]
    digits_only = re.sub(r"[.,']", "", token)
    values: set[float] = set()
    if not seps:
        values.add(float(token))
    else:
        last = max(token.rfind(c) for c in ".,")
        if last >= 0:
            head, tail = token[:last], token[last + 1:]
            head_digits = re.sub(r"[.,']", "", head)
            if head_digits:
                values.add(float(f"{head_digits}.{tail}"))  # the last separator is the decimal point
            if len(tail) == 3:
                values.add(float(digits_only))  # ... or a thousands separator
        else:
            values.add(float(digits_only))  # apostrophes or narrow spaces only: thousands
    return [sign * v for v in values]


_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
          r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?")
_NOT_AMOUNTS = re.compile(
    r"\b\d{4}-\d{1,2}-\d{1,2}\b"  # 2024-08-23
    r"|\b\d{1,2}[./-]\d{1,2}[./-]\d{2,4}\b"  # 23.08.2024, 8/23/24
    r"|\b\d{1,2}(?:st|nd|rd|th)?\s+" + _MONTH + r"(?:\s+\d{4})?"  # 6 September 2024
    r"|\b" + _MONTH + r"\s+\d{1,2}(?:st|nd|rd|th)?(?:,?\s+\d{4})?"  # May 16, 2018
    r"|\b\d{1,2}:\d{2}(?::\d{2})?\b"  # 19:11
    r"|(?<![\d.,])\d+(?:[.,]\d+)?\s?%"  # 20 %: a rate
    # BR/24/105, NW-2024-118, 202511-34, 2-11-3: a reference or an address, not amounts
    # (every pattern starts at a boundary, so a long run of digits or letters is scanned once)
    r"|(?<![#\w])[#\w]+(?:[-/][#\w]+)+",
    re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<![\w.,])(\d+(?:[.,]\d+)?)\s?[kK]\b")


def _amounts_only(text: str) -> str:
    """`text` with dates, times and identifiers blanked out: what is left are amounts."""
    return _NOT_AMOUNTS.sub(lambda m: " " * len(m.group()), text)


def candidate_numbers(document: str) -> list[float]:
    """The amounts printed in the document, in every reading (dates, times and identifiers
    such as `BR/24/105` are not amounts; `88k` is read as 88000)."""
    text = _amounts_only(document)
    out: dict[float, None] = {}
    for match in _NUMBER.finditer(text):
        for value in _readings(match.group()):
            out[value] = None
    for match in _THOUSANDS.finditer(text):
        for value in _readings(match.group(1)):
            out[round(value * 1000, 6)] = None
    return list(out)


def _free_text(node: Mapping[str, Any]) -> bool:
    return node.get("type") == "string" and not any(k in node for k in ("enum", "const", "format", "pattern"))


def _numeric(node: Mapping[str, Any]) -> str | None:
    kind = node.get("type")
    if kind in ("number", "integer") and not any(k in node for k in ("enum", "const")):
        return str(kind)
    return None


def _within(node: Mapping[str, Any], value: float) -> bool:
    if "minimum" in node and value < node["minimum"]:
        return False
    if "maximum" in node and value > node["maximum"]:
        return False
    if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
        return False
    return not ("exclusiveMaximum" in node and value >= node["exclusiveMaximum"])


def _number_enum(node: Mapping[str, Any], kind: str, numbers: Iterable[float]) -> list[int | float]:
    out: list[int | float] = []
    for value in numbers:
        if not _within(node, value):
            continue
        if value.is_integer():
            out.append(int(value))
        elif kind == "number":
            out.append(value)
    return list(dict.fromkeys(out))


_LIST_SPLIT = re.compile(r"[,;/|\u2022\u00b7]|\.\s|\s(?:and|or|&)\s")


def _pieces(document: str) -> int:
    """How many list entries the document could print: its cells, split at commas, semicolons,
    slashes, bullets, sentence ends and `and` / `or`."""
    return sum(len([p for p in _LIST_SPLIT.split(cell) if p.strip()])
               for line in document.splitlines() for cell in _CELL_SPLIT.split(line.strip()) if cell.strip())


def _item_parts(document: str, k: int) -> list[str]:
    """The lines, or `;`-separated parts of a line (a sentence billing three items), that print at
    least `k` amounts: where an item with `k` number fields can be."""
    return [part for line in document.splitlines() for part in line.split(";")
            if len(_NUMBER.findall(_amounts_only(part))) >= k]


def _required_numbers(node: Mapping[str, Any], root: Mapping[str, Any]) -> int:
    """How many required fields of an object schema are numbers (through `$ref`s)."""
    node = resolve_ref(node, root)
    props = node.get("properties", {})
    return sum(1 for name in node.get("required", ()) if resolve_ref(props.get(name, {}), root).get("type")
               in ("number", "integer"))


def _max_items(node: Mapping[str, Any], root: Mapping[str, Any], document: str) -> int:
    items = resolve_ref(node.get("items", {}), root)
    if items.get("type") == "object":
        k = _required_numbers(items, root)
        return len(_item_parts(document, k)) if k else sum(1 for line in document.splitlines() if line.strip())
    return _pieces(document)


def _spans_within(document: str, max_candidates: int) -> list[str]:
    for words in range(MAX_WORDS, 0, -1):
        spans = candidate_spans(document, max_words=words)
        if len(spans) <= max_candidates:
            return spans
    return []


_LEAVE = frozenset({"enum", "const", "default", "examples"})


def _item_defs(schema: Mapping[str, Any]) -> dict[str, int]:
    """The `$defs` that are the items of an array of objects with required number fields, with
    how many such fields they have."""
    out: dict[str, int] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, Mapping):
            items = node.get("items")
            if node.get("type") == "array" and isinstance(items, Mapping) and "$ref" in items:
                k = _required_numbers(items, schema)
                if k:
                    out[str(items["$ref"]).rsplit("/", 1)[-1]] = k
            for value in node.values():
                walk(value)

    walk(schema)
    return out


def constrain_to_document(schema: Mapping[str, Any], document: str, *, numbers: bool = True,
                          max_candidates: int = MAX_CANDIDATES) -> dict[str, Any]:
    """A copy of `schema` (a strict schema) whose free-text strings, and numbers unless
    `numbers=False`, can only take values that occur in `document`. A document longer than
    `MAX_DOCUMENT_CHARS` (far past any model's context) gets the schema unchanged: the engine
    refuses it as too long anyway."""
    out: dict[str, Any] = copy.deepcopy(dict(schema))
    if len(document) > MAX_DOCUMENT_CHARS:
        return out
    root = dict(schema)
    spans = _spans_within(document, max_candidates)
    found = candidate_numbers(document) if numbers else []
    item_defs = _item_defs(root)
    # one definition that every free-text field refers to: the grammar compiles the list once
    span_ref = {"$ref": f"#/$defs/{SPAN_DEF}"}
    used = False

    def item_numbers(k: int) -> list[float]:
        return candidate_numbers("\n".join(_item_parts(document, k))) if numbers else []

    def walk(node: Any, amounts: list[float]) -> Any:
        nonlocal used
        if isinstance(node, list):
            return [walk(item, amounts) for item in node]
        if not isinstance(node, dict):
            return node
        if _free_text(node) and spans:
            used = True
            return dict(span_ref)
        if (kind := _numeric(node)) and amounts and (allowed := _number_enum(node, kind, amounts)):
            node["enum"] = allowed
        done: set[str] = set()
        if node.get("type") == "array" and "items" in node and not node.get("prefixItems"):
            bound = max(_max_items(node, root, document), int(node.get("minItems", 0)))
            node["maxItems"] = min(bound, int(node.get("maxItems", bound)))
            items = node["items"]
            if isinstance(items, dict) and "$ref" not in items and (k := _required_numbers(items, root)):
                node["items"] = walk(items, item_numbers(k) or amounts)  # an item's amounts come from item lines
                done.add("items")
        return {key: value if key in _LEAVE or key in done else walk(value, amounts) for key, value in node.items()}

    defs = out.get("$defs", {})
    for name, definition in list(defs.items()):
        k = item_defs.get(name, 0)
        defs[name] = walk(definition, (item_numbers(k) or found) if k else found)
    out = {key: value if key == "$defs" else walk(value, found) for key, value in out.items()}
    if used:
        out.setdefault("$defs", {})[SPAN_DEF] = {"type": "string", "enum": spans}
    return out
