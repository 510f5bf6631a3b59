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
  (`20 %`), international phone numbers (`+1 416 555 0199`) and identifiers such as `BR/24/105`
  are not amounts: their digits are not offered (so a number
  field meant to hold a year printed only inside a date cannot be decoded this way);
- an array of objects with `k` required number fields whose item lines each print some text
  gets, as its items, one variant per item line and per way of giving those `k` fields
  different amounts of that line: the variant's free-text strings are spans of that line only
  and each of its `k` numbers is one amount printed there, no amount used twice (the model that
  writes "Printer paper" can only give it the quantity and the price printed next to it, and
  never the quantity as the price too). For two number fields, an amount that is the product of
  two others on the line (a line total) is not offered. Item lines are those that print `k`
  amounts, and of those, where some print money (two decimals, a currency sign or code), only
  those (a street number and a postal code are no item); a list's numbering (`1.`) is no
  amount. Past `MAX_ITEM_VARIANTS` variants, or where an item line prints no text (a table
  whose descriptions sit on the line above), the items keep the amounts of all item lines
  together;
- every array gets a `maxItems` the document can fill: an array of objects with `k` required
  number fields at most one item per line, or `;`-separated part of a line, printing `k`
  amounts (an invoice's item line prints its quantity and price), other arrays of
  objects one per non-empty line, arrays of strings one per piece of text (cells, split at
  commas, semicolons, slashes, bullets, sentence ends and "and" / "or"). A small model that
  repeats the last list item until `max_tokens` is stopped by the grammar instead.

- a string `enum` (a currency code, an employment type) is narrowed to the values the document
  prints, compared without case and with `_` / `-` read as spaces (`full_time` is printed as
  "Full-time"); where it prints none of them the enum is left whole;
- a `format: date` string gets an `enum` of the dates the document prints, written as ISO
  dates (`2024-05-14`, `14.05.2024`, `9 April 2025`, `May 16, 2018`; both readings of a date
  like `03/04/2024`); where it prints none, the format is left alone.

Since it is still a JSON schema, the same schema goes to every engine: the grammar (xgrammar on
the CPU, vLLM's guided decoding on the GPU) then makes the model copy a value rather than write
one. Nullable fields keep their `null` branch, so "not in the document" stays expressible.

Limits: a field is left as it was when the document offers no candidate for it (a number field
in a document without numbers), and the candidate list is capped at `max_candidates` by using
shorter word runs, so a long document still compiles in bounded time. A value the document
states only in another form (an implied quantity of 1, a currency written only as `$`) is not
offered, or the field is left as it was.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from extractor.contracts.schema_walk import allows_null, def_name, is_free_text, resolve_ref, type_names
from extractor.engines.base import DOCUMENT_SPAN_DEF

__all__ = ["ConstraintTooLarge",
           "amount_count", "bound_lists", "candidate_dates", "candidate_numbers", "candidate_spans", "constrain_to_document",
           "has_free_text", "number_enum", "offers", "prints_money", "prints_text", "required_numbers", "span_pattern", "span_schema"]

MAX_WORDS = 12
MAX_CANDIDATES = 4000
MAX_JOINED_LINES = 4
#: past this, no per-document constraint is even attempted (the constraint budget of
#: `extractor.grounding.constraint` is far smaller; this bounds direct callers)
MAX_CONSTRAINED_CHARS = 200_000
#: at most this many item variants (item lines x ways to give the number fields their amounts)
MAX_ITEM_VARIANTS = 256
#: the `$defs` entry holding the document's spans
SPAN_DEF = DOCUMENT_SPAN_DEF

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
    r"|(?<![\w+])\+\d[\d ()-]{5,}\d"  # +1 416 555 0199: a phone number (its "+1" is no age)
    # BR/24/105, NW-2024-118, 202511-34, 2-11-3: a reference or an address, not amounts
    # (every pattern starts at a boundary, so a long run of digits or letters is scanned once)
    r"|(?<![#\w])[#\w]+(?:[-/][#\w]+)+",
    re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<![\w.,])(\d+(?:[.,]\d+)?)\s?[kK]\b")


#: `1.` / `2)` opening a line: a list's numbering, not an amount
_LIST_MARKER = re.compile(r"^[ \t]*\(?\d{1,3}[.)](?=[ \t])", re.MULTILINE)


def _amounts_only(text: str) -> str:
    """`text` with dates, times, identifiers and list numbering blanked out: what is left are amounts."""
    blank = _NOT_AMOUNTS.sub(lambda m: " " * len(m.group()), text)
    return _LIST_MARKER.sub(lambda m: " " * len(m.group()), blank)


def _amount_slots(text: str) -> list[list[float]]:
    """The amounts `text` prints, one entry per printed amount (with every reading of it)."""
    return [readings for _, readings in _amount_prints(text)]


def _amount_prints(text: str) -> list[tuple[str, list[float]]]:
    """`_amount_slots` with each amount as printed (`24.00`, `3`, `88k`)."""
    text = _amounts_only(text)
    prints = [(m.group(), _readings(m.group())) for m in _NUMBER.finditer(text)]
    prints += [(m.group(), [round(v * 1000, 6) for v in _readings(m.group(1))]) for m in _THOUSANDS.finditer(text)]
    return prints


def candidate_numbers(document: str) -> list[float]:
    """The amounts printed in the document, in every reading (dates, times and identifiers
    such as `BR/24/105` are not amounts; `88k` is read as 88000)."""
    return list(dict.fromkeys(value for slot in _amount_slots(document) for value in slot))


_MONTHS = {name: i + 1 for i, names in enumerate(
    ("jan january", "feb february", "mar march", "apr april", "may", "jun june", "jul july", "aug august",
     "sep sept september", "oct october", "nov november", "dec december")) for name in names.split()}
_MONTH_NAME = r"(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DATES = (
    (re.compile(r"\b(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})\b"), "ymd"),
    (re.compile(r"\b(\d{1,2})[./-](\d{1,2})[./-](\d{4}|\d{2})\b"), "dmy|mdy"),
    (re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+" + _MONTH_NAME + r",?\s+(\d{4})\b", re.IGNORECASE), "dMy"),
    (re.compile(r"\b" + _MONTH_NAME + r"\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})\b", re.IGNORECASE), "Mdy"),
)


def candidate_dates(document: str) -> list[str]:
    """The dates the document prints, as ISO dates, in document order (both readings of an
    ambiguous `03/04/2024`; two-digit years are 20xx)."""
    import datetime as dt

    found: list[tuple[int, str]] = []

    def add(at: int, year: str, month: str | int, day: str) -> None:
        y = int(year) + (2000 if len(year) == 2 else 0)
        try:
            found.append((at, dt.date(y, int(month), int(day)).isoformat()))
        except ValueError:
            pass

    for pattern, order in _DATES:
        for m in pattern.finditer(document):
            a, b, c = m.groups()
            if order == "ymd":
                add(m.start(), a, b, c)
            elif order == "dmy|mdy":
                add(m.start(), c, b, a)
                add(m.start(), c, a, b)
            elif order == "dMy":
                add(m.start(), c, _MONTHS[b.lower()], a)
            else:
                add(m.start(), c, _MONTHS[a.lower()], b)
    return list(dict.fromkeys(iso for _, iso in sorted(found, key=lambda f: f[0])))


def _normalised(text: str) -> str:
    return " " + " ".join(re.sub(r"[_\-\s]+", " ", text.lower()).split()) + " "


def _printed_enum(values: list[Any], document_words: str) -> list[Any]:
    """The string values of an enum that the document prints (as whole words, see the module doc)."""
    out = []
    for value in values:
        if not isinstance(value, str):
            return []  # a mixed enum is left alone
        needle = _normalised(value).strip()
        if needle and re.search(r"(?<![^\W_])" + re.escape(needle) + r"(?![^\W_])", document_words):
            out.append(value)
    return out


def _free_text(node: Mapping[str, Any]) -> bool:
    """Free text (`is_free_text`) written as a plain `type: "string"`: the constraint replaces the
    node, so a `["string", "null"]` node keeps its own (strict schemas write optional strings as
    `anyOf` branches, which reach here one by one)."""
    return is_free_text(node) and type_names(node) == ("string",)


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


def number_enum(node: Mapping[str, Any], numbers: Iterable[float]) -> list[int | float]:
    """The values of `numbers` a number or integer node can take (within its bounds; an integer
    node only whole ones); empty for a node that is no number."""
    kind = _numeric(node)
    return _number_enum(node, kind, numbers) if kind else []


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


#: an amount written as money: two decimals, or next to a currency sign or a three-letter code
_MONEY = re.compile(r"[$\u20ac\u00a3\u00a5\u20b9]\s?\d|\d[.,]\d{2}(?!\d)|\d\s?[A-Z]{3}\b|\b[A-Z]{3}\s?\d")


def _item_parts(document: str, k: int) -> list[str]:
    """The lines, or `;`-separated parts of a line (a sentence billing three items), that print at
    least `k` amounts: where an item with `k` number fields can be. Where some of them print money
    (`4.50`, `$4`, `15 EUR`), only those: a street number and a postal code are not an item."""
    parts = [(part, amounts) for line in document.splitlines() for part in line.split(";")
             if len(_NUMBER.findall(amounts := _amounts_only(part))) >= k]
    money = [part for part, amounts in parts if _MONEY.search(amounts)]
    return money or [part for part, _ in parts]


def amount_count(text: str) -> int:
    """How many amounts `text` prints (dates, times, identifiers and list numbering are none)."""
    return len(_NUMBER.findall(_amounts_only(text)))


def prints_money(text: str) -> bool:
    """Whether `text` prints an amount as money (two decimals, a currency sign or code)."""
    return _MONEY.search(_amounts_only(text)) is not None


def prints_text(text: str) -> bool:
    """Whether `text` prints a letter outside its dates and identifiers (an item line's description)."""
    return _LETTER.search(_amounts_only(text)) is not None


def required_numbers(node: Mapping[str, Any], root: Mapping[str, Any]) -> int:
    """How many required fields of an object schema are numbers (through `$ref`s)."""
    return _required_numbers(node, root)


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


_LETTER = re.compile(r"[^\W\d_]")


#: `_line_total` looks for a line total only on lines printing at most this many amounts: the search
#: is cubic in them, and a line printing more is no item line (a one-line invoice of 400 amounts)
MAX_FACTOR_SLOTS = 12


def _line_total(slots: list[list[float]]) -> int | None:
    """The index of a line's last amount that is the product of two others (`5  3.50  17.50`: the
    line total of a quantity and a unit price), left out for an item of two number fields; None
    where there is none, or the line prints more than `MAX_FACTOR_SLOTS` amounts."""
    if len(slots) > MAX_FACTOR_SLOTS:
        return None
    for c in range(len(slots) - 1, -1, -1):
        others = [slot for i, slot in enumerate(slots) if i != c]
        if len(others) >= 2 and any(abs(x * y - z) <= max(0.01, 0.005 * abs(z))
                                    for a in range(len(others)) for b in range(a + 1, len(others))
                                    for x in others[a] for y in others[b] for z in slots[c]):
            return c
    return None


#: an item's number field that counts (a quantity), and amounts printed as money or as a count
_COUNT_FIELD = re.compile(r"(?:^|_)(?:quantity|qty|count|units|pieces|pcs)$", re.IGNORECASE)
_PRINTED_MONEY = re.compile(r"[-\u2212]?\d+(?:[.,'\u00a0\u202f]\d{3})*[.,]\d\d")
_PRINTED_COUNT = re.compile(r"\d{1,4}")


def _money_as_count(fields: Sequence[tuple[str, str]], chosen: Sequence[int], printed: Sequence[str]) -> bool:
    """Whether a choice of a line's amounts gives a count field (`quantity`) an amount printed as
    money (`24.00`) and another field one printed as a count (`3`): `3 x Cable reel at 24.00` read
    as 24 reels at 3.00. SmolLM2 chose that swap on every invoice line tried (issue 13), and the
    items-add-up check cannot see it (3 x 24 = 24 x 3)."""
    counts = [i for i, (name, _) in enumerate(fields) if _COUNT_FIELD.search(name)]
    return any(_PRINTED_MONEY.fullmatch(printed[chosen[i]]) for i in counts) and any(
        _PRINTED_COUNT.fullmatch(printed[chosen[j]]) for j in range(len(fields)) if j not in counts)


def _number_fields(item: Mapping[str, Any], root: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, "number" | "integer") of the required number fields of an object schema."""
    props = item.get("properties", {})
    out = []
    for name in item.get("required", ()):
        kind = _numeric(resolve_ref(props.get(name, {}), root))
        if kind is not None:
            out.append((str(name), kind))
    return out


def _spans_within(document: str, max_candidates: int) -> list[str]:
    for words in range(MAX_WORDS, 0, -1):
        spans = candidate_spans(document, max_words=words)
        if len(spans) <= max_candidates:
            return spans
    return []


_LEAVE = frozenset({"enum", "const", "default", "examples"})

#: a property named for a phone number, and the runs of a document that can be one (7 digits or more)
_PHONE_FIELD = re.compile(r"(?:^|_)(?:phone|telephone|tel|mobile|cell|fax)(?:_?(?:number|no))?$", re.IGNORECASE)
_PHONE_SPAN = re.compile(r"\+?\(?\d[\d\s().\-/]{5,}\d")
_DATE_RUN = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
PHONE_DEF = "DocumentPhone"


def is_phone_field(name: str) -> bool:
    """Whether a property's name says it holds a phone number (`phone`, `mobile_number`, `fax` ...)."""
    return _PHONE_FIELD.search(name) is not None


def phone_spans(document: str) -> list[str]:
    """The runs of `document` that can be a phone number: digits (7 or more) with the separators
    phone numbers print ("+1 416 555 0199", "(03) 8736-1234", "555-0101"), dates left out."""
    out: dict[str, None] = {}
    for m in _PHONE_SPAN.finditer(document):
        text = m.group().strip()
        if sum(c.isdigit() for c in text) >= 7 and not _DATE_RUN.fullmatch(text):
            out[text] = None
    return list(out)


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
                    out[def_name(str(items["$ref"]))] = k
            for value in node.values():
                walk(value)

    walk(schema)
    return out


#: regex metacharacters, escaped in a span's pattern (only these: xgrammar warns on other escapes)
_REGEX_ESCAPES = str.maketrans({c: "\\" + c for c in ".^$*+?()[]{}|\\"})
_PIECE = re.compile(r"\S+|\s+")
#: a span with a quote, a backslash or a control character goes to an `enum` beside the pattern:
#: JSON writes it escaped, and xgrammar's regex writes the character raw (invalid JSON)
_UNPATTERNED = re.compile(r'["\\\x00-\x1f\x7f]')


def span_pattern(spans: Iterable[str]) -> str:
    """An anchored regex matching exactly the given strings: their trie, written as nested
    alternatives (`^(?:KEDAI(?: MAKANAN(?: SRI)?)?|...)$`). A grammar compiles it several times
    faster, and into several times less memory, than the same strings as an `enum`, whose
    every string the grammar walks character by character (bench/grounding_cost.py)."""
    trie: dict[str, Any] = {}  # of words and the spaces between them: a few times fewer steps than characters
    for span in spans:
        node = trie
        for piece in _PIECE.findall(span):
            node = node.setdefault(piece, {})
        node[""] = None  # a span ends here
    # written in pre-order from a stack of nodes and text: linear in the trie's size, and no
    # recursion (a span may be longer than Python's recursion limit); a chain of nodes with one
    # child each (most of a long span) is written in one go, without going through the stack
    out: list[str] = []
    stack: list[str | dict[str, Any]] = [trie]
    escaped: dict[str, str] = {}

    def escape(piece: str) -> str:
        found = escaped.get(piece)
        if found is None:
            found = escaped[piece] = piece.translate(_REGEX_ESCAPES)
        return found

    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node = item
        while len(node) == 1 and "" not in node:
            ((piece, node),) = node.items()
            out.append(escape(piece))
        children = [(piece, child) for piece, child in node.items() if piece]
        if not children:
            continue
        ends = "" in node
        wrap = len(children) > 1 or ends
        parts: list[str | dict[str, Any]] = ["(?:"] if wrap else []
        for i, (piece, child) in enumerate(children):
            if i:
                parts.append("|")
            parts.append(escape(piece))
            parts.append(child)
        if wrap:
            parts.append(")?" if ends else ")")
        stack.extend(reversed(parts))
    return "^" + "".join(out) + "$"


def span_schema(spans: Iterable[str]) -> dict[str, Any]:
    """The schema of a string that is one of `spans`: a `pattern` of their trie (see
    `span_pattern`), with the few spans a regex cannot carry (`_UNPATTERNED`) as an `enum` beside it."""
    plain: list[str] = []
    escaped: list[str] = []
    for span in spans:
        (escaped if _UNPATTERNED.search(span) else plain).append(span)
    patterned = {"type": "string", "pattern": span_pattern(plain)}
    if not escaped:
        return patterned
    return {"anyOf": [patterned, {"type": "string", "enum": escaped}]}


def has_free_text(schema: Mapping[str, Any]) -> bool:
    """Whether any node of `schema` is a free-text string (one that grounded decoding constrains)."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if _free_text(node):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def offers(span: Mapping[str, Any], value: str) -> bool:
    """Whether a span definition of a per-document schema (`span_schema`) lets a field take `value`."""
    if "anyOf" in span:
        return any(offers(branch, value) for branch in span["anyOf"])
    if "pattern" in span:
        return re.fullmatch(span["pattern"], value) is not None
    return value in span.get("enum", ())


def bound_lists(schema: Mapping[str, Any], document: str) -> dict[str, Any]:
    """A copy of `schema` (a strict schema) in which only every array gets the `maxItems` the
    document can fill (as `constrain_to_document` gives it): no values narrowed, so the schema
    stays as small as the task's. What a document whose full constraint is past its budget keeps
    (`extractor.grounding.constraint`): a small model that repeats a list item until `max_tokens`
    (80-100 s a record on one CPU thread) is still stopped by the grammar."""
    out: dict[str, Any] = copy.deepcopy(dict(schema))
    if len(document) > MAX_CONSTRAINED_CHARS:
        return out
    root = dict(schema)

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if node.get("type") == "array" and "items" in node and not node.get("prefixItems"):
            bound = max(_max_items(node, root, document), int(node.get("minItems", 0)))
            node["maxItems"] = min(bound, int(node.get("maxItems", bound)))
        return {key: value if key in _LEAVE else walk(value) for key, value in node.items()}

    return {key: walk(value) for key, value in out.items()}


class ConstraintTooLarge(ValueError):
    """The document's spans alone are past `constrain_to_document`'s `max_bytes`."""


def constrain_to_document(schema: Mapping[str, Any], document: str, *, numbers: bool = True,
                          max_candidates: int = MAX_CANDIDATES, max_bytes: int | None = None) -> dict[str, Any]:
    """A copy of `schema` (a strict schema) whose free-text strings, and numbers unless
    `numbers=False`, can only take values that occur in `document`. A document longer than
    `MAX_CONSTRAINED_CHARS` (far past any model's context) gets the schema unchanged: the engine
    refuses it as too long anyway. `max_bytes`: raise `ConstraintTooLarge` as soon as the
    document's spans alone are larger than that in JSON, before the rest is built (a line of 400
    amounts would take most of the time in its item variants)."""
    out: dict[str, Any] = copy.deepcopy(dict(schema))
    if len(document) > MAX_CONSTRAINED_CHARS:
        return out
    root = dict(schema)
    spans = _spans_within(document, max_candidates)
    span_def = span_schema(spans) if spans and has_free_text(schema) else None
    if span_def is not None and max_bytes is not None and len(json.dumps(span_def)) > max_bytes:
        raise ConstraintTooLarge(f"the document's spans alone are past {max_bytes} bytes")
    found = candidate_numbers(document) if numbers else []
    item_defs = _item_defs(root)
    # one definition that every free-text field refers to: the grammar compiles the list once
    span_ref = {"$ref": f"#/$defs/{SPAN_DEF}"}
    used = phone_used = False
    #: the spans of each item line, for the item variants
    line_defs: dict[str, dict[str, Any]] = {}
    document_words = _normalised(document)
    dates = candidate_dates(document)
    phones = phone_spans(document)

    def item_numbers(k: int) -> list[float]:
        return candidate_numbers("\n".join(_item_parts(document, k))) if numbers else []

    def walk(node: Any, amounts: list[float], span: dict[str, str] = span_ref) -> Any:
        nonlocal used
        if isinstance(node, list):
            return [walk(item, amounts, span) for item in node]
        if not isinstance(node, dict):
            return node
        if _free_text(node) and (spans or span is not span_ref):
            used = used or span is span_ref
            return dict(span)
        if (kind := _numeric(node)) and amounts and (allowed := _number_enum(node, kind, amounts)):
            node["enum"] = allowed
        if node.get("type") == "string" and isinstance(node.get("enum"), list) and (
                printed := _printed_enum(node["enum"], document_words)):
            node["enum"] = printed
        if node.get("type") == "string" and node.get("format") == "date" and "enum" not in node and dates:
            node["enum"] = dates
        done: set[str] = set()
        if node.get("type") == "array" and "items" in node and not node.get("prefixItems"):
            bound = max(_max_items(node, root, document), int(node.get("minItems", 0)))
            node["maxItems"] = min(bound, int(node.get("maxItems", bound)))
            items = node["items"]
            resolved = resolve_ref(items, root) if isinstance(items, dict) else {}
            k = _required_numbers(resolved, root) if resolved.get("type") == "object" else 0
            if k and (variants := item_variants(resolved, k)):
                node["items"] = {"anyOf": variants}
                done.add("items")
            elif isinstance(items, dict) and "$ref" not in items and k:
                node["items"] = walk(items, item_numbers(k) or amounts, span)  # an item's amounts: item lines
                done.add("items")
        if span is span_ref:
            phone_properties(node)
        return {key: value if key in _LEAVE or key in done else walk(value, amounts, span)
                for key, value in node.items()}

    def phone_properties(node: dict[str, Any]) -> None:
        if isinstance(node.get("properties"), dict):
            node["properties"] = {name: phone_field(sub) if _PHONE_FIELD.search(name) and isinstance(sub, dict)
                                  else sub for name, sub in node["properties"].items()}

    def phone_field(node: dict[str, Any]) -> Any:
        """A free-text property named for a phone number takes only the document's phone-shaped
        runs (`phone_spans`), or null where it has none and the schema allows null: SmolLM2 wrote
        a person's name as the phone of a plain `Contact` model, and 123-456-7890 without grounding."""
        resolved = resolve_ref(node, root)
        text_branch = _free_text(resolved) or any(isinstance(o, Mapping) and _free_text(o)
                                                  for o in resolved.get("anyOf", ()))
        if not text_branch:
            return node
        nonlocal phone_used
        if phones:
            phone_used = True
            return walk(copy.deepcopy(node), [], {"$ref": f"#/$defs/{PHONE_DEF}"})
        return {"type": "null"} if allows_null(resolved) else node

    def item_variants(item: Mapping[str, Any], k: int) -> list[dict[str, Any]] | None:
        """One item schema per item line and per injective choice of that line's amounts for the
        item's required number fields; None where that does not apply (see the module's doc)."""
        parts = _item_parts(document, k)
        fields = _number_fields(item, root)
        if not numbers or not parts or len(fields) != k:
            return None
        if any(not _LETTER.search(_amounts_only(part)) for part in parts):
            return None  # an item line without text: its description is printed elsewhere
        variants: dict[str, dict[str, Any]] = {}
        first_def = len(line_defs)
        for part in parts:
            part_spans = candidate_spans(part)
            prints = _amount_prints(part)
            if k == 2 and (total := _line_total([readings for _, readings in prints])) is not None:
                del prints[total]
            slots = [readings for _, readings in prints]
            printed = [token for token, _ in prints]
            name = f"{SPAN_DEF}Line{len(line_defs)}"
            line_defs[name] = span_schema(part_spans)
            base = walk(copy.deepcopy(dict(item)), [v for slot in slots for v in slot], {"$ref": f"#/$defs/{name}"})
            base_key = json.dumps(base, sort_keys=True)
            line: dict[str, dict[str, Any]] = {}
            # a count given money (`_money_as_count`), and what some other choice gives as well (the
            # same values read from other amounts: `3 x Widget at 3.00`): dropped where others are left
            swapped: set[str] = set()
            clean: set[str] = set()
            for tried, chosen in enumerate(itertools.permutations(range(len(slots)), k)):
                if tried > MAX_ITEM_VARIANTS * 4:
                    break  # the rest of a line of hundreds of amounts: no item prints that many
                # the variants share what they do not change (never mutated afterwards)
                variant = {**base, "properties": dict(base["properties"])}
                key: list[Any] = [base_key]
                for (field, kind), slot in zip(fields, chosen, strict=True):
                    node = variant["properties"][field]
                    allowed = _number_enum(resolve_ref(node, root), kind, slots[slot])
                    if not allowed:
                        break
                    variant["properties"][field] = {**node, "enum": allowed}
                    key.append(allowed)
                else:
                    line.setdefault(json.dumps(key), variant)
                    (swapped if _money_as_count(fields, chosen, printed) else clean).add(json.dumps(key))
                if len(variants) + len(line) > MAX_ITEM_VARIANTS:
                    for stale in list(line_defs)[first_def:]:
                        del line_defs[stale]
                    return None
            kept = {key: v for key, v in line.items() if key not in swapped - clean} or line
            for key_text, variant in kept.items():
                variants.setdefault(key_text, variant)
        return list(variants.values()) or None

    defs = out.get("$defs", {})
    for name, definition in list(defs.items()):
        k = item_defs.get(name, 0)
        defs[name] = walk(definition, (item_numbers(k) or found) if k else found)
    phone_properties(out)
    out = {key: value if key == "$defs" else walk(value, found) for key, value in out.items()}
    if used and span_def is not None:  # (a free-text field took the spans: there are spans and free text)
        out.setdefault("$defs", {})[SPAN_DEF] = span_def
    if line_defs:
        out.setdefault("$defs", {}).update(line_defs)
    if phone_used:
        out.setdefault("$defs", {})[PHONE_DEF] = span_schema(phones)
    return out
