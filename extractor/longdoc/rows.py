"""The rows of a list, found in the document before anything is decoded.

A long invoice is a header (vendor, number, date), a table of item rows and a footer (the total);
a bank statement the same with transactions; a staff report a paragraph per person. Where the
rows can be found by their shape, the document is read in two kinds of pieces:

- **row chunks**: consecutive rows, each chunk with the header line of their table in front
  (the column names), extracted with one item per row, in order, held there by the grammar
  (`extractor.grounding.rows`): the model cannot stop short, skip a row or add one;
- **the header view**: the document without its rows (and without the repeats of a table's
  header line printed on every page), where the other fields are asked, as required as the
  schema says: they can be nowhere else.

Which lines are rows (`find_rows`):

- a list of objects with `k` required number fields (an invoice's quantity and unit price, a
  transaction's amount): the lines printing at least `k` amounts; where some of those print money
  (two decimals, a currency sign or code), only those; where some of those are table rows (two
  or more cells), only those (the "Closing balance: 12.00" line is no transaction). Each is
  *firm*: it is one item. Where one of them prints no text (its description is on another line),
  the list has no row plan.
- a list of records without required numbers, asked for as many records (`many`): the document's
  paragraphs (blocks between blank lines), headings excepted, where it has at least two. Where
  most of them share a shape (the classes of their first words: `Mei Schmidt, 61, lives` is
  capitalised, capitalised, comma, number, comma, lowercase), those are firm and the others
  *loose*: one record or none (an introduction that names no one). Where no shape is shared,
  every paragraph is firm: a small model offered `null` answers `null` to every row.

A row under a table header gets its cells by column (`Row.cells`): the header's column names
are matched to the item's field names (`Description` -> description, `Unit price` -> unit_price,
`Qty` -> quantity: the same words, one name's words among the other's, or an abbreviation), and
each cell of the row to the column it sits under (by order when the row has as many cells as the
header, else by overlap of their characters).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extractor.contracts.schema_walk import resolve_ref
from extractor.grounding.decoding import amount_count, prints_money, prints_text, required_numbers
from extractor.grounding.rows import RowText
from extractor.longdoc.split import Excerpt, Line, is_heading, is_table_row, split_lines, table_headers

_CELL_GAP = re.compile(r"\t| \| |\s{2,}")
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
#: at most this many rows go to one chunk (each row is a part of the chunk's grammar); a document
#: whose list has more is read in pieces even where it would fit the context
MAX_ROWS_PER_CHUNK = 40


@dataclass(frozen=True)
class Row:
    """A row: characters `[start, end)` of the document (its lines, newline included)."""

    start: int
    end: int
    text: str
    #: the header line of the table the row is in
    header: Line | None = None
    #: field name -> the cell printed under its column
    cells: Mapping[str, str] = field(default_factory=dict)
    #: the row is one item (else one item or none)
    firm: bool = True

    def as_text(self) -> RowText:
        return RowText(self.text, self.cells, optional=not self.firm)


@dataclass(frozen=True)
class RowPlan:
    """The rows of list `field`."""

    field: str
    rows: tuple[Row, ...]

    @property
    def firm(self) -> bool:
        """Every row is one item."""
        return all(r.firm for r in self.rows)


def list_item(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The item schema of an array node (a nullable array too), or None for no array."""
    node = resolve_ref(node, root)
    if node.get("type") != "array":
        arrays = [b for b in node.get("anyOf", ()) if isinstance(b, Mapping) and resolve_ref(b, root).get("type") == "array"]
        if len(arrays) != 1:
            return None
        node = resolve_ref(arrays[0], root)
    items = node.get("items")
    return resolve_ref(items, root) if isinstance(items, Mapping) else None


def cell_spans(line: str) -> list[tuple[int, int, str]]:
    """The cells of a line with their character positions (cells are split as `split.cells`)."""
    out: list[tuple[int, int, str]] = []
    pos = 0
    for gap in [*_CELL_GAP.finditer(line), None]:
        stop = gap.start() if gap is not None else len(line)
        piece = line[pos:stop]
        stripped = piece.strip().strip("|").strip()
        if stripped:
            at = pos + piece.index(stripped)
            out.append((at, at + len(stripped), stripped))
        if gap is not None:
            pos = gap.end()
    return out


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


def _abbreviates(short: str, long: str) -> bool:
    """`qty` abbreviates `quantity`: the same first letter, the rest in order."""
    if len(short) < 2 or len(short) >= len(long) or short[0] != long[0]:
        return False
    it = iter(long)
    return all(ch in it for ch in short)


def name_score(column: str, field_name: str) -> int:
    """How well a column name names a field: 3 the same words, 2 one's words among the other's,
    1 an abbreviation, 0 not at all."""
    c, f = _words(column), _words(field_name)
    if not c or not f:
        return 0
    if c == f:
        return 3
    if set(c) <= set(f) or set(f) <= set(c):
        return 2
    return 1 if _abbreviates("".join(c), "".join(f)) else 0


def column_fields(header: str, fields: list[str]) -> dict[int, str]:
    """Header cell index -> the field it names (each field at most once, best matches first)."""
    columns = [text for _, _, text in cell_spans(header)]
    pairs = sorted(((name_score(c, f), i, f) for i, c in enumerate(columns) for f in fields), key=lambda p: (-p[0], p[1]))
    out: dict[int, str] = {}
    for score, i, f in pairs:
        if score > 0 and i not in out and f not in out.values():
            out[i] = f
    return out


def row_cells(header: str, line: str, mapping: Mapping[int, str]) -> dict[str, str]:
    """Field -> the cell of `line` under that field's column of `header`."""
    heads, cells = cell_spans(header), cell_spans(line)
    if not mapping or not cells:
        return {}
    if len(cells) == len(heads):
        owner = list(range(len(cells)))
    else:
        owner = []
        for a, b, _ in cells:
            overlaps = [min(b, hb) - max(a, ha) for ha, hb, _ in heads]
            best = max(range(len(heads)), key=lambda i: (overlaps[i], -abs((a + b) - (heads[i][0] + heads[i][1]))))
            owner.append(best)
    out: dict[str, str] = {}
    for (_, _, text), col in zip(cells, owner, strict=True):
        name = mapping.get(col)
        if name is not None:
            out[name] = f"{out[name]} {text}" if name in out else text
    return out


def _item_rows(lines: list[Line], k: int) -> list[int] | None:
    found = [i for i, line in enumerate(lines) if amount_count(line.text) >= k]
    found = [i for i in found if prints_money(lines[i].text)] or found
    found = [i for i in found if is_table_row(lines[i].text)] or found
    if not found or any(not prints_text(lines[i].text) for i in found):
        return None
    return found


def _paragraphs(lines: list[Line]) -> list[tuple[int, int]]:
    """(first, last) line of each block of non-blank lines that is not a lone heading."""
    out: list[tuple[int, int]] = []
    first: int | None = None
    for i, line in enumerate([*lines, None]):
        blank = line is None or not line.text.strip("\f \t")
        if not blank and first is None:
            first = i
        elif blank and first is not None:
            if not (i - first == 1 and is_heading(lines[first].text.strip("\f"))):
                out.append((first, i - 1))
            first = None
    return out


_TOKEN = re.compile(r"[^\W\d_]+|\d+|[^\w\s]")
#: a paragraph's shape: the classes of its first few tokens
SHAPE_TOKENS = 6


def _shape(text: str) -> tuple[str, ...]:
    """`Mei Schmidt, 61, lives in` -> ('A', 'A', ',', '9', ',', 'a'): capitalised and lowercase
    words, numbers, punctuation as itself."""
    out = []
    for token in _TOKEN.findall(text)[:SHAPE_TOKENS]:
        out.append("9" if token.isdigit() else "A" if token[0].isupper() else "a" if token[0].isalpha() else token)
    return tuple(out)


def find_rows(document: str, item: Mapping[str, Any], root: Mapping[str, Any], field_name: str, *,
              many: bool) -> RowPlan | None:
    """The rows of list `field_name` whose items are `item` (see the module's doc), or None."""
    if item.get("type") != "object":
        return None
    lines = split_lines(document, len(document) + 1)
    headers = table_headers(lines)
    k = required_numbers(item, root)
    fields = list(item.get("properties", {}))
    loose: set[int] = set()
    if k:
        found = _item_rows(lines, k)
        if found is None:
            return None
        spans = [(i, i) for i in found]
    elif many:
        spans = _paragraphs(lines)
        if len(spans) < 2:
            return None
        shapes = [_shape(document[lines[a].start:lines[b].end]) for a, b in spans]
        common, count = Counter(shapes).most_common(1)[0]
        loose = {k for k, shape in enumerate(shapes) if count * 2 >= len(shapes) and count >= 2 and shape != common}
    else:
        return None
    mappings: dict[int, dict[int, str]] = {}
    rows = []
    for n, (first, last) in enumerate(spans):
        start, end = lines[first].start, lines[last].end
        text = document[start:end].rstrip("\r\n")
        h = headers[first] if first == last else None
        header = lines[h] if h is not None and h < first else None
        cells: dict[str, str] = {}
        if header is not None and h is not None:
            mapping = mappings.setdefault(h, column_fields(header.text, fields))
            cells = row_cells(header.text, lines[first].text, mapping)
        rows.append(Row(start, end, text, header, cells, n not in loose))
    return RowPlan(field_name, tuple(rows))


def _header_segment(header: Line) -> tuple[int, int]:
    skip = len(header.text) - len(header.text.lstrip("\f"))
    return header.start + skip, header.end


def _table(row: Row) -> str | None:
    """The table a row is in, by its header line's text (a table continued on the next page
    under the same header is the same table)."""
    return row.header.text.strip("\f \t") if row.header is not None else None


def row_chunks(document: str, rows: list[Row], max_chars: int, first_index: int = 0,
               max_rows: int = MAX_ROWS_PER_CHUNK) -> list[tuple[Excerpt, list[Row]]]:
    """Consecutive rows of one table in excerpts of at most about `max_chars` (and at most
    `max_rows` rows), each with its table's header line in front; a table's rows are spread
    evenly over as few chunks as that takes."""
    tables: list[list[Row]] = []
    for row in rows:
        if tables and _table(row) == _table(tables[-1][0]):
            tables[-1].append(row)
        else:
            tables.append([row])
    out: list[tuple[Excerpt, list[Row]]] = []
    for table in tables:
        sizes = [r.end - r.start for r in table]
        total = sum(sizes)
        count = max(-(-total // max(1, max_chars)), -(-len(table) // max(1, max_rows)))
        groups: list[list[Row]] = [[] for _ in range(count)]
        done = 0
        for k, (row, length) in enumerate(zip(table, sizes, strict=True)):
            by_size = int((done + length / 2) * count / max(1, total))
            by_rows = k * count // len(table)
            groups[min(count - 1, max(by_size, by_rows))].append(row)
            done += length
        out += [_excerpt(document, g, first_index + len(out) + i) for i, g in enumerate(x for x in groups if x)]
    return out


def _excerpt(document: str, group: list[Row], index: int) -> tuple[Excerpt, list[Row]]:
    segments = [_header_segment(group[0].header)] if group[0].header is not None else []
    segments += [(r.start, r.end) for r in group]
    return Excerpt(index, document, tuple(segments)), list(group)


def header_view(document: str, rows: list[Row], index: int = 0) -> Excerpt | None:
    """The document without its rows, without the repeats of a table's header line (and the
    rule line under each), and with runs of blank lines made one: where the other fields are."""
    spans = sorted((r.start, r.end) for r in rows)
    starts = [a for a, _ in spans]
    lines = split_lines(document, len(document) + 1)
    segments: list[tuple[int, int]] = []
    seen_headers: set[str] = set()
    skip_rule = False
    prev_blank = True
    for line in lines:
        k = bisect.bisect_right(starts, line.start) - 1
        if k >= 0 and line.start < spans[k][1]:  # a row's line
            continue
        text = line.text.strip("\f \t")
        if skip_rule and line.blank and text:
            skip_rule = False
            continue
        skip_rule = False
        if text and is_table_row(line.text) and not any(ch.isdigit() for ch in text):
            if text in seen_headers:
                skip_rule = True
                continue
            seen_headers.add(text)
        blank = not text
        if blank and prev_blank and "\f" not in line.text:
            continue
        prev_blank = blank
        if line.end > line.start:
            segments.append((line.start, line.end))
    merged: list[tuple[int, int]] = []
    for a, b in segments:
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return Excerpt(index, document, tuple(merged)) if merged else None
