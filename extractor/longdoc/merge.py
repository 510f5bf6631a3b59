"""Merging the records of a document's chunks by source span.

Every value a chunk returns is grounded in the chunk's text and its spans mapped to the whole
document (`Chunk.to_document`), so two chunks' values can be compared by the characters they
come from:

- **list items** (line items, or the records of `many=True`) are placed at an *anchor*: the
  occurrence of their first grounded free-text value (else of their first grounded value), taken
  in order through the chunk and never twice in one chunk, so a row printed twice has two
  anchors. Items of two chunks with the same anchor are one item (the overlap of the chunks),
  the reading of the chunk where the anchor sits farther from the chunk's edges winning (more
  context), then the longer reading; items at different anchors are all kept, in document order.
- **other top-level fields** (the vendor, the total): the chunks' non-null values; values that
  are equal, or strings whose spans overlap (the same characters read whole or in part), are one
  value (the longest reading). Different values are a conflict, settled by the field's rule
  (`Task.merge_rules`): `first` / `last` in the document, `nearest:KEYWORD` (the value printed
  closest after KEYWORD), or `raise` (`MergeConflict`); each conflict is reported.

An anchor in `locked` keeps the item it already has (a streamed item is never replaced).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extractor.errors import MergeConflict
from extractor.grounding.fieldpath import field_path, leaves
from extractor.grounding.spans import Span, ground_record
from extractor.longdoc.split import Piece

DEFAULT_RULE = "first"


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk's validated record (JSON) and its values' spans in the whole document."""

    chunk: Piece
    data: dict[str, Any]
    spans: dict[str, list[Span]]
    #: the extraction pass that produced it (1 = the first)
    pass_no: int = 1


def chunk_record(chunk: Piece, data: dict[str, Any], pass_no: int = 1,
                 rows: tuple[str, Sequence[tuple[int, str]]] | None = None) -> ChunkRecord:
    """Ground `data` in the chunk's text; spans are mapped to document offsets. `rows`: (list
    field, (document offset, text) of each row the chunk's list was read from, one item per
    row): where the list has one item per row, item k is grounded in row k alone."""
    spans: dict[str, list[Span]] = {}
    by_row = rows is not None and isinstance(data.get(rows[0]), list) and len(data[rows[0]]) == len(rows[1])
    rest = {k: v for k, v in data.items() if not (by_row and rows is not None and k == rows[0])}
    for path, found in ground_record(rest, chunk.text).items():
        spans[path] = [Span(chunk.to_document(s.start), chunk.to_document(s.end - 1) + 1, s.match) for s in found]
    if by_row and rows is not None:
        name, texts = rows
        for k, (item, (at, text)) in enumerate(zip(data[name], texts, strict=True)):
            for path, found in ground_record(item, text).items():
                key = f"{name}[{k}]" + (f".{path}" if path and not path.startswith("[") else path)
                spans[key] = [Span(at + s.start, at + s.end, s.match) for s in found]
    return ChunkRecord(chunk, data, spans, pass_no)


@dataclass(frozen=True)
class Item:
    """A list item placed in the document."""

    value: Any
    anchor: Span | None
    chunk: int
    order: tuple[int, int, int]  # document position, chunk, position in the chunk's list
    spans: dict[str, list[Span]]  # relative path ("description") -> its span near the anchor
    centrality: int
    pass_no: int = 1

    @property
    def key(self) -> tuple[int, int] | None:
        return (self.anchor.start, self.anchor.end) if self.anchor is not None else None


@dataclass
class Merged:
    data: dict[str, Any]
    spans: dict[str, list[Span]]
    #: per field path prefix ("line_items[3]", "total"): the chunks its value came from
    sources: dict[str, list[int]]
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    #: per list field, its items in document order
    items: dict[str, list[Item]] = field(default_factory=dict)


def _sub_spans(spans: Mapping[str, list[Span]], prefix: str) -> dict[str, list[Span]]:
    out: dict[str, list[Span]] = {}
    for path, found in spans.items():
        if path.startswith(prefix):
            rest = path[len(prefix):].lstrip(".")
            out[rest] = found
    return out


def _key_path(value: Any, spans: Mapping[str, list[Span]]) -> str | None:
    """The path (relative to the item) of the value that anchors an item."""
    first_any = None
    for parts, leaf in leaves(value):
        path = field_path(parts) if parts else ""
        if not spans.get(path):
            continue
        if isinstance(leaf, str):
            return path
        first_any = first_any if first_any is not None else path
    return first_any


def place_items(record: ChunkRecord, name: str) -> list[Item]:
    """The items of list field `name` of one chunk's record, each at its anchor."""
    values = record.data.get(name) or []
    chunk = record.chunk
    taken: set[int] = set()
    cursor = chunk.start
    out: list[Item] = []
    last_pos = chunk.start
    for i, value in enumerate(values):
        if value is None:  # a row read as holding no record (`records_task(nullable=True)`)
            continue
        spans = _sub_spans(record.spans, f"{name}[{i}]")
        key = _key_path(value, spans) if isinstance(value, dict | list) else ("" if spans.get("") else None)
        anchor = None
        if key is not None:
            options = sorted(spans[key], key=lambda s: s.start)
            free = [s for s in options if s.start not in taken]
            anchor = next((s for s in free if s.start >= cursor), free[0] if free else None)
        near: dict[str, list[Span]] = {}
        if anchor is not None:
            taken.add(anchor.start)
            cursor = anchor.start
            last_pos = anchor.start
            at = anchor.start
            for path, found in spans.items():
                if found:
                    near[path] = [min(found, key=lambda s: (s.start < at, abs(s.start - at)))]
        centrality = min(anchor.start - chunk.start, chunk.end - anchor.end) if anchor is not None else 0
        out.append(Item(value, anchor, chunk.index, (last_pos, chunk.index, i), near, centrality, record.pass_no))
    return out


def _better(new: Item, old: Item) -> bool:
    if new.pass_no != old.pass_no:
        return new.pass_no < old.pass_no  # a later pass only adds new spans
    new_len = sum(s[0].end - s[0].start for s in new.spans.values() if s)
    old_len = sum(s[0].end - s[0].start for s in old.spans.values() if s)
    return (new.centrality, new_len) > (old.centrality, old_len)


def merge_items(records: Iterable[ChunkRecord], name: str, locked: Mapping[tuple[int, int], Any] | None = None
                ) -> list[Item]:
    """The items of list field `name` over every chunk: one per anchor, in document order."""
    by_anchor: dict[tuple[int, int], Item] = {}
    loose: list[Item] = []
    for record in records:
        for item in place_items(record, name):
            key = item.key
            if key is None:
                loose.append(item)
            elif key not in by_anchor or (not (locked and key in locked) and _better(item, by_anchor[key])):
                by_anchor[key] = item
    # an item without anchor that equals an anchored one of another chunk is that item
    seen = {json.dumps(i.value, sort_keys=True) for i in by_anchor.values()}
    kept = [i for i in loose if json.dumps(i.value, sort_keys=True) not in seen]
    return sorted([*by_anchor.values(), *kept], key=lambda i: i.order)


@dataclass(frozen=True)
class _Candidate:
    value: Any
    spans: list[Span]
    chunk: int


def _keyword_positions(document: str, keyword: str) -> list[int]:
    return [m.end() for m in re.finditer(re.escape(keyword), document, re.IGNORECASE)]


def _distance_after(spans: list[Span], keyword_ends: list[int]) -> float:
    best = float("inf")
    for s in spans:
        for k in keyword_ends:
            d = s.start - k
            best = min(best, d if d >= 0 else 10_000 - d)  # a value printed before the keyword: far
    return best


def _overlap(a: list[Span], b: list[Span]) -> bool:
    return any(x.start < y.end and y.start < x.end for x in a for y in b)


def _pick(name: str, groups: list[_Candidate], rule: str, document: str) -> _Candidate:
    def first_pos(c: _Candidate) -> tuple[int, int]:
        return (min((s.start for s in c.spans), default=len(document)), c.chunk)

    if rule == "raise":
        shown = ", ".join(json.dumps(c.value) for c in groups)
        raise MergeConflict(f"chunks disagree on {name}: {shown}", field=name, values=[c.value for c in groups])
    if rule == "last":
        return max(groups, key=lambda c: (max((s.start for s in c.spans), default=-1), c.chunk))
    if rule.startswith("nearest:"):
        ends = _keyword_positions(document, rule.removeprefix("nearest:"))
        if ends:
            return min(groups, key=lambda c: (_distance_after(c.spans, ends), first_pos(c)))
    return min(groups, key=first_pos)


def merge_field(name: str, records: Iterable[ChunkRecord], rule: str, document: str
                ) -> tuple[_Candidate | None, dict[str, Any] | None]:
    """One top-level non-list field over every chunk: the value and, for a conflict, its report."""
    groups: list[_Candidate] = []
    for record in records:
        value = record.data.get(name)
        if value is None:
            continue
        spans = [s for path, found in _sub_spans(record.spans, name).items() for s in found]
        cand = _Candidate(value, spans, record.chunk.index)
        for i, g in enumerate(groups):
            same = g.value == value or (isinstance(value, str) and isinstance(g.value, str) and _overlap(g.spans, spans))
            if same:
                longer = cand if len(str(value)) > len(str(g.value)) else g
                groups[i] = _Candidate(longer.value, [*g.spans, *[s for s in spans if s not in g.spans]], longer.chunk)
                break
        else:
            groups.append(cand)
    if not groups:
        return None, None
    if len(groups) == 1:
        return groups[0], None
    chosen = _pick(name, groups, rule, document)
    return chosen, {"field": name, "values": [g.value for g in groups], "chose": chosen.value, "rule": rule}


def merge_records(records: list[ChunkRecord], schema: Mapping[str, Any], rules: Mapping[str, str], document: str,
                  locked: Mapping[str, Mapping[tuple[int, int], Any]] | None = None,
                  lists: Collection[str] | None = None) -> Merged:
    """The chunks' records as one record of the schema's top-level fields (see the module
    docstring); `lists` names the list fields (default: those of type array)."""
    records = sorted(records, key=lambda r: (r.pass_no, r.chunk.index))
    data: dict[str, Any] = {}
    spans: dict[str, list[Span]] = {}
    sources: dict[str, list[int]] = {}
    merged = Merged(data, spans, sources)
    for name, node in schema.get("properties", {}).items():
        if (name in lists) if lists is not None else node.get("type") == "array":
            items = merge_items(records, name, (locked or {}).get(name))
            merged.items[name] = items
            data[name] = [i.value for i in items]
            for k, item in enumerate(items):
                sources[f"{name}[{k}]"] = [item.chunk]
                for path, found in item.spans.items():
                    spans[f"{name}[{k}]" + (f".{path}" if path and not path.startswith("[") else path)] = found
            continue
        chosen, conflict = merge_field(name, records, rules.get(name, DEFAULT_RULE), document)
        data[name] = chosen.value if chosen is not None else None
        if chosen is not None:
            sources[name] = [chosen.chunk]
            if chosen.spans:
                spans[name] = sorted(set(chosen.spans), key=lambda s: s.start)
        if conflict is not None:
            merged.conflicts.append(conflict)
    return merged
