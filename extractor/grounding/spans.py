"""Source grounding: where each extracted value occurs in the document. Pure, no engine.

For a string value, in order, until one finds something:

1. `exact`: the value as written, at word boundaries (a value never matches inside a longer word:
   "Ali" is not found in "Alice"); every occurrence, up to `MAX_SPANS`.
2. `normalized`: the same search after folding both sides: Unicode compatibility forms, accents
   dropped, case folded, typographic quotes made plain, dashes and underscores made spaces,
   whitespace runs made one space. Offsets map back to the original document.
3. `fuzzy`: the best window of whole words (of the value's word count, or one more or one fewer;
   punctuation around a word is no part of it)
   by difflib's similarity ratio on the folded text, if at least `fuzzy_threshold` and with the
   same digits in the same order (a near miss of `INV-0042` is never `INV-0043`); one span.

Numbers are found where they appear literally (`34`, `12.50` for 12.5, `1,200` for 1200), never
inside a longer number; ISO dates (`2024-03-03`) also as the usual written forms
(`3 March 2024`, `March 3, 2024`, `03/03/2024`, ...), reported as `normalized`.

`ground_record` gives the spans of every string and number of a record, keyed by field path
(`extractor.grounding.fieldpath`); a value found nowhere gets an empty list. `ungrounded_errors` lists the
free-text strings (schema type `string` without `enum`, `const` or `format`) that have no span,
as validation messages, for the retry loop to feed back (`require_grounded`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Any, Literal

from extractor.contracts.schema_walk import is_free_text, resolve_ref
from extractor.grounding.fieldpath import Part, dollar_path, field_path, leaves

MatchKind = Literal["exact", "normalized", "fuzzy"]

#: occurrences reported per value
MAX_SPANS = 8
#: the lowest similarity ratio of a fuzzy match
FUZZY_THRESHOLD = 0.85
#: fuzzy search is skipped for values shorter than this (folded) and documents longer than
#: `MAX_FUZZY_WORDS` words (it compares the value with three windows at every word)
MIN_FUZZY_CHARS = 4
MAX_FUZZY_WORDS = 50_000
_MAX_PROBES = 10_000


@dataclass(frozen=True)
class Span:
    """Characters `[start, end)` of the document (Python string offsets, i.e. code points)."""

    start: int
    end: int
    match: MatchKind

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "match": self.match}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Span:
        match = str(raw["match"])
        if match not in ("exact", "normalized", "fuzzy"):
            raise ValueError(f"unknown match kind {match!r}")
        return cls(int(raw["start"]), int(raw["end"]), match)  # type: ignore[arg-type]


# -- folding ------------------------------------------------------------------------------------

_PUNCT = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "`": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "-": " ", "_": " ", "\u2010": " ", "\u2011": " ", "\u2012": " ", "\u2013": " ", "\u2014": " ", "\u2015": " ",
    "\u2212": " ",
})


@lru_cache(maxsize=8192)
def _fold_char(ch: str) -> str:
    decomposed = unicodedata.normalize("NFKD", ch)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().translate(_PUNCT)


def fold(text: str) -> str:
    """The folded form of `text` (what the `normalized` search compares)."""
    return _Folded(text).text


class _Folded:
    """A folded text and, for each of its characters, the original character it came from."""

    def __init__(self, original: str) -> None:
        chars: list[str] = []
        origin: list[int] = []
        space = True  # drops leading whitespace
        for i, ch in enumerate(original):
            for c in _fold_char(ch):
                if c.isspace():
                    if space:
                        continue
                    c, space = " ", True
                else:
                    space = False
                chars.append(c)
                origin.append(i)
        if chars and chars[-1] == " ":
            chars.pop()
            origin.pop()
        self.text = "".join(chars)
        self.origin = origin

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        return self.origin[start], self.origin[end - 1] + 1


# -- searching ----------------------------------------------------------------------------------

def _wordish(ch: str) -> bool:
    # letters and digits of scripts that separate words with spaces (not CJK, from U+2E80)
    return ch.isalnum() and ord(ch) < 0x2E80


def _at_word_boundaries(text: str, start: int, end: int) -> bool:
    if start > 0 and _wordish(text[start]) and _wordish(text[start - 1]):
        return False
    return not (end < len(text) and _wordish(text[end - 1]) and _wordish(text[end]))


def _at_number_boundaries(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else ""
    if before.isdigit() or (before in (".", ",") and start > 1 and text[start - 2].isdigit()):
        return False
    after = text[end] if end < len(text) else ""
    return not (after.isdigit() or (after in (".", ",") and end + 1 < len(text) and text[end + 1].isdigit()))


def _occurrences(haystack: str, needle: str, numeric: bool = False) -> list[int]:
    bounded = _at_number_boundaries if numeric else _at_word_boundaries
    out: list[int] = []
    i = haystack.find(needle)
    probes = 0
    while i != -1 and len(out) < MAX_SPANS and probes < _MAX_PROBES:
        if bounded(haystack, i, i + len(needle)):
            out.append(i)
        i = haystack.find(needle, i + 1)
        probes += 1
    return out


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DIGITS = re.compile(r"\D")
#: a word of a fuzzy window: letters and digits, with the punctuation inside it ("j.doe@x.org", not "Lisbon.")
_WORD = re.compile(r"\w+(?:[^\s\w]+\w+)*")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def date_forms(value: str) -> list[str]:
    """Written forms of an ISO date (English month names; day-first and month-first numerals)."""
    try:
        d = dt.date.fromisoformat(value)
    except ValueError:
        return []
    y, m, day = d.year, d.month, d.day
    forms: list[str] = []
    for month in (_MONTHS[m - 1], _MONTHS[m - 1][:3]):
        for dd in (str(day), f"{day:02d}", _ordinal(day)):
            forms += [f"{dd} {month} {y}", f"{dd} {month}, {y}", f"{month} {dd}, {y}", f"{month} {dd} {y}"]
    for dd, mm in ((f"{day:02d}", f"{m:02d}"), (str(day), str(m))):
        for sep in ("/", ".", "-"):
            forms += [f"{dd}{sep}{mm}{sep}{y}", f"{mm}{sep}{dd}{sep}{y}"]
    forms.append(f"{y}/{m:02d}/{day:02d}")
    return list(dict.fromkeys(forms))


def number_forms(value: int | float) -> list[str]:
    """How a number may be written: as JSON first, then with two decimals, thousands separators
    (`,` `.` or a space) and a decimal comma."""
    forms = [json.dumps(value)]
    if isinstance(value, float) and not value.is_integer():
        two = f"{value:.2f}"
        forms += [repr(value), two, f"{value:,.2f}", two.replace(".", ","),
                  f"{value:,.2f}".replace(",", " ").replace(".", ","),
                  f"{value:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")]
    else:
        n = int(value)
        grouped = f"{n:,}"
        forms += [str(n), grouped, grouped.replace(",", "."), grouped.replace(",", " "),
                  f"{n}.00", f"{n:,}.00", f"{n},00", f"{grouped.replace(',', '.')},00"]
    return list(dict.fromkeys(f for f in forms if f))


class Grounder:
    """Finds values in one document; folds the document once, on the first search that needs it."""

    def __init__(self, document: str, *, fuzzy_threshold: float = FUZZY_THRESHOLD) -> None:
        self.document = document
        self.fuzzy_threshold = fuzzy_threshold
        self._folded: _Folded | None = None
        self._words: list[tuple[int, int]] | None = None

    @property
    def folded(self) -> _Folded:
        if self._folded is None:
            self._folded = _Folded(self.document)
        return self._folded

    def exact(self, value: str) -> list[Span]:
        return [Span(i, i + len(value), "exact") for i in _occurrences(self.document, value)] if value else []

    def normalized(self, value: str) -> list[Span]:
        needle = fold(value)
        if not needle:
            return []
        folded = self.folded
        return [Span(*folded.original_span(i, i + len(needle)), "normalized") for i in _occurrences(folded.text, needle)]

    def fuzzy(self, value: str) -> list[Span]:
        needle = fold(value)
        folded = self.folded
        if len(needle) < MIN_FUZZY_CHARS:
            return []
        if self._words is None:
            self._words = [(m.start(), m.end()) for m in _WORD.finditer(folded.text)]
        words = self._words
        if not words or len(words) > MAX_FUZZY_WORDS:
            return []
        count = max(1, len(_WORD.findall(needle)))
        digits = _DIGITS.sub("", needle)
        matcher = SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(needle)
        best, best_at = self.fuzzy_threshold, None
        for i in range(len(words)):
            for k in (count, count - 1, count + 1):
                if k < 1 or i + k > len(words):
                    continue
                start, end = words[i][0], words[i + k - 1][1]
                window = folded.text[start:end]
                matcher.set_seq1(window)
                if matcher.real_quick_ratio() < best or matcher.quick_ratio() < best:
                    continue
                if _DIGITS.sub("", window) != digits:  # "INV-0043" is not a near miss of "INV-0042"
                    continue
                ratio = matcher.ratio()
                if ratio > best or (best_at is None and ratio >= best):
                    best, best_at = ratio, (start, end)
        if best_at is None:
            return []
        return [Span(*folded.original_span(*best_at), "fuzzy")]

    def text(self, value: str) -> list[Span]:
        """Spans of a string value: exact, else normalized, else (ISO dates) a written date, else fuzzy."""
        value = value.strip()
        if not value:
            return []
        found = self.exact(value) or self.normalized(value)
        if not found and _ISO_DATE.match(value):
            found = self._any_form(date_forms(value))
        return found or self.fuzzy(value)

    def number(self, value: int | float) -> list[Span]:
        """Spans of a number written literally: its JSON form is `exact`, other forms `normalized`."""
        forms = number_forms(value)
        for form in forms:
            hits = _occurrences(self.document, form, numeric=True)
            if hits:
                kind: MatchKind = "exact" if form == forms[0] else "normalized"
                return [Span(i, i + len(form), kind) for i in hits]
        return []

    def _any_form(self, forms: list[str]) -> list[Span]:
        for form in forms:
            found = self.normalized(form)
            if found:
                return found
        return []

    def value(self, value: Any) -> list[Span] | None:
        """Spans of any scalar; None for what is not grounded at all (null, booleans)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self.number(value)
        return None


def ground_record(data: Any, document: str, *, fuzzy_threshold: float = FUZZY_THRESHOLD) -> dict[str, list[Span]]:
    """Field path -> the spans of its value, for every string and number of `data` (a JSON value)."""
    grounder = Grounder(document, fuzzy_threshold=fuzzy_threshold)
    out: dict[str, list[Span]] = {}
    for parts, value in leaves(data):
        if not parts:
            continue
        found = grounder.value(value)
        if found is not None:
            out[field_path(parts)] = found
    return out


# -- which values must be grounded ---------------------------------------------------------------

_JSON_TYPES: dict[type, tuple[str, ...]] = {
    type(None): ("null",), bool: ("boolean",), int: ("integer", "number"), float: ("number",),
    str: ("string",), list: ("array",), dict: ("object",),
}


def _fits(node: Mapping[str, Any], value: Any) -> bool:
    if "const" in node:
        return bool(node["const"] == value)
    if "enum" in node:
        return value in node["enum"]
    kinds = node.get("type")
    if kinds is None:
        return True
    wanted = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    return any(k in wanted for k in _JSON_TYPES.get(type(value), ()))


def _branch(node: Mapping[str, Any], root: Mapping[str, Any], value: Any) -> Mapping[str, Any]:
    node = resolve_ref(node, root)
    for key in ("anyOf", "oneOf"):
        for option in node.get(key, ()):
            option = resolve_ref(option, root)
            if _fits(option, value):
                return _branch(option, root, value)
    return node


def free_text_paths(data: Any, schema: Mapping[str, Any]) -> list[tuple[Part, ...]]:
    """The path parts of the strings of `data` whose schema is free text (`is_free_text`): the
    values that should be copied from the document."""
    out: list[tuple[Part, ...]] = []

    def walk(value: Any, node: Mapping[str, Any], parts: tuple[Part, ...]) -> None:
        node = _branch(node, schema, value)
        if isinstance(value, dict):
            props = node.get("properties", {})
            for key, item in value.items():
                walk(item, props.get(key, {}), (*parts, str(key)))
        elif isinstance(value, list):
            prefix, items = node.get("prefixItems", []), node.get("items", {})
            for i, item in enumerate(value):
                walk(item, prefix[i] if i < len(prefix) else items if isinstance(items, Mapping) else {}, (*parts, i))
        elif isinstance(value, str) and value.strip() and is_free_text(node):
            out.append(parts)

    walk(data, schema, ())
    return out


def ungrounded_errors(data: Any, schema: Mapping[str, Any], spans: Mapping[str, list[Span]]) -> list[str]:
    """Validation messages for the free-text strings of `data` that have no span in `spans`."""
    errors = []
    for parts in free_text_paths(data, schema):
        if spans.get(field_path(parts)):
            continue
        value: Any = data
        for part in parts:
            value = value[part]
        shown = value if len(value) <= 80 else value[:77] + "..."
        errors.append(f"{dollar_path(parts)}: {shown!r} does not occur in the document; "
                      "copy the value exactly as the document writes it")
    return errors
