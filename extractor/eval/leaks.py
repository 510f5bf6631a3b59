"""Values copied from few-shot examples: an output value that equals a value of one of the
contract's example records and that the document itself does not contain.

Standalone (standard library only). An example is anything with a `document` (str) and a
`record` (mapping) attribute, such as `extractor.contracts.contract.Example`, or a mapping with those keys,
so the check runs on a task's examples as they are (`leaks(task.examples, record, document)`).
`extract eval` reports the count per field (`copied` in the report's fields).

Comparison rules:
- strings: case-insensitive, whitespace runs collapsed (`"New  York"` == `"new york"`); a string
  "occurs" in the document when its normalised form is a substring of the normalised document;
- numbers as numbers: `29`, `29.0` and `"29"` are one value, and `"18.90"` equals `18.9`; a number
  occurs in the document when the document prints an amount of that value (`18.90`, `1,234.50`,
  `1.234,50`, `29`) or writes it in English words (`twenty-nine`), so an age written in words is
  not reported as a leak;
- booleans, `None` and empty strings are never reported (a null is not a copied value);
- records are walked to their leaves (lists and nested objects), each leaf with its path
  (`items[0].amount`); an output leaf is compared with every leaf of every example record, not only
  the same field, since a model also copies an example's value into another field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Leak", "leak_counts", "leak_field", "leaks", "occurs_in", "same_value"]


@dataclass(frozen=True)
class Leak:
    """One output value equal to an example's value and absent from the document."""

    path: str  # where it is in the output record: `age`, `items[0].amount`
    value: Any  # the output value
    example: int  # index of the example whose record holds it
    example_path: str  # where it is in that example's record


_NUMBER_TOKEN = re.compile(r"(?<![\w.,])[-\u2212]?\d+(?:[.,'\u00a0\u202f]\d+)*(?![\w])")
_NUMERIC_STRING = re.compile(r"^\s*[-\u2212]?\d+(?:[.,]\d+)*\s*$")

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_WORD = re.compile(r"[a-z]+")


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def _readings(token: str) -> set[float]:
    """The values a printed amount may mean: `1,234.50` -> 1234.5, `1.234,50` -> 1234.5,
    `3,500` -> 3500 or 3.5, `2,85` -> 2.85, `29` -> 29."""
    token = token.replace("\u2212", "-").replace("\u00a0", "'").replace("\u202f", "'")
    sign = -1.0 if token.startswith("-") else 1.0
    token = token.lstrip("-")
    digits = re.sub(r"[.,']", "", token)
    values: set[float] = set()
    last = max(token.rfind("."), token.rfind(","))
    if last < 0:
        values.add(float(digits))
    else:
        head, tail = re.sub(r"[.,']", "", token[:last]), token[last + 1:]
        if head:
            values.add(float(f"{head}.{tail}"))
        if len(tail) == 3:
            values.add(float(digits))
    return {sign * v for v in values}


def _word_numbers(text: str) -> set[float]:
    """Numbers 0-999 written in English words: `twenty-nine`, `forty one`, `one hundred and five`."""
    found: set[float] = set()
    words = _WORD.findall(text.casefold())
    i = 0
    while i < len(words):
        if words[i] not in _UNITS and words[i] not in _TENS:
            i += 1
            continue
        value, j = 0, i
        while j < len(words):
            w = words[j]
            if w in _TENS or w in _UNITS:
                value += _TENS.get(w, 0) + _UNITS.get(w, 0)
            elif w == "hundred":
                value *= 100
            elif w == "and" and j + 1 < len(words) and (words[j + 1] in _UNITS or words[j + 1] in _TENS):
                j += 1
                continue
            else:
                break
            found.add(float(value))
            j += 1
        i = j
    return found


def _as_number(value: Any) -> float | None:
    """The value as a number: an int or float, or a string that is only a printed amount
    (its first reading; `same_value` and `occurs_in` compare every reading)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _NUMERIC_STRING.match(value):
        return min(_readings(value.strip()))
    return None


def _number_readings(value: Any) -> set[float]:
    if isinstance(value, str):
        return _readings(value.strip())
    number = _as_number(value)
    return set() if number is None else {number}


def same_value(a: Any, b: Any) -> bool:
    """Equal as numbers when both are numbers (or numeric strings), else as normalised strings."""
    if _as_number(a) is not None and _as_number(b) is not None:
        return any(abs(x - y) < 1e-9 for x in _number_readings(a) for y in _number_readings(b))
    if isinstance(a, str) and isinstance(b, str):
        return _normalise(a) == _normalise(b)
    return False


def occurs_in(value: Any, document: str) -> bool:
    """Whether the document contains the value (see the module's comparison rules)."""
    if isinstance(value, str) and _normalise(value) in _normalise(document):
        return True
    if _as_number(value) is None:
        return False
    printed: set[float] = set()
    for m in _NUMBER_TOKEN.finditer(document):
        printed |= _readings(m.group())
    printed |= _word_numbers(document)
    return any(abs(x - y) < 1e-9 for x in _number_readings(value) for y in printed)


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]")
    elif node is None or isinstance(node, bool) or (isinstance(node, str) and not node.strip()):
        return
    else:
        yield path, node


def _example_parts(example: Any) -> tuple[str, Mapping[str, Any]]:
    if isinstance(example, Mapping):
        return str(example["document"]), example["record"]
    return str(example.document), example.record


def leaks(examples: Iterable[Any], record: Mapping[str, Any] | Any, document: str,
          expected: Mapping[str, Any] | None = None) -> list[Leak]:
    """The leaves of `record` that equal a leaf of an example's record and do not occur in
    `document`, in the record's order; each leaf is reported once, with the first example
    (and path in it) that holds the value. `record` may be a mapping or a Pydantic model.
    With the document's label (`expected`), a leaf equal to the label at the same path is the
    document's own value, not a copy: a category such as `full_time` that the document writes
    "Full-time" and an example also has."""
    if not isinstance(record, Mapping) and hasattr(record, "model_dump"):
        record = record.model_dump()
    example_leaves = [(i, path, value) for i, ex in enumerate(examples) for path, value in _leaves(_example_parts(ex)[1])]
    labeled = dict(_leaves(expected)) if expected is not None else {}
    out: list[Leak] = []
    for path, value in _leaves(record):
        if occurs_in(value, document) or (path in labeled and same_value(value, labeled[path])):
            continue
        for i, ex_path, ex_value in example_leaves:
            if same_value(value, ex_value):
                out.append(Leak(path, value, i, ex_path))
                break
    return out


def leak_field(path: str) -> str:
    """`items[0].amount` -> `items[].amount`: the field a leaf belongs to, named as
    `extractor.eval.metrics` names it, for per-field counts."""
    return re.sub(r"\[\d+\]", "[]", path)


def leak_counts(examples: Sequence[Any], pairs: Iterable[tuple[Mapping[str, Any], str]]) -> dict[str, int]:
    """Over (record, document) pairs, how many copied-from-example values each field had."""
    counts: dict[str, int] = {}
    for record, document in pairs:
        for leak in leaks(examples, record, document):
            key = leak_field(leak.path)
            counts[key] = counts.get(key, 0) + 1
    return counts
