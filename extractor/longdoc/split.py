"""Cutting a long document into chunks that respect its structure.

A chunk ends before a line, never inside one (a line longer than a whole chunk is cut at
whitespace), and where it can it ends at the strongest break near its budget: a page (form
feed), a heading, a blank line, then between two table rows. Consecutive chunks overlap by a few
lines, so a value that sits across a cut is whole in the next chunk. A chunk that starts inside a
table gets the table's header line (its column names) in front, so the model still reads the
columns. Every chunk keeps its offsets: `Chunk.to_document` maps a character of the chunk's text
to the same character of the whole document, header included.

An `Excerpt` is any selection of the document's characters read as one text (the rows of a
table with their header line, the document without its rows: `extractor.longdoc.rows`); it
maps its characters back the same way. Both are `Piece`s, which is all the merge needs.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Protocol

#: break strength before a line (higher cuts first)
PAGE, HEADING, PARAGRAPH, ROW, LINE = 4, 3, 2, 1, 0
#: a chunk is cut at the strongest break in its last part (this fraction of its budget)
BREAK_WINDOW = 0.4

_CELLS = re.compile(r"\t| \| |\s{2,}")
_LINES = re.compile(r"[^\n]*\n|[^\n]+$")
_RULE = re.compile(r"^[\s|:+=_-]+$")
_CAPS_HEADING = re.compile(r"^[A-Z][A-Z0-9 &/,.:()'-]{2,59}$")


@dataclass(frozen=True)
class Line:
    start: int
    end: int  # past the newline
    text: str  # without the newline

    @property
    def blank(self) -> bool:
        return not self.text.strip() or (_RULE.match(self.text) is not None and "\f" not in self.text)


@dataclass(frozen=True)
class Chunk:
    """Characters `[start, end)` of the document, with a table header carried in front."""

    index: int
    start: int
    end: int
    body: str
    #: the header line of the table this chunk starts inside, and where it is in the document
    header: str | None = None
    header_start: int = 0

    @property
    def text(self) -> str:
        return f"{self.header}\n{self.body}" if self.header is not None else self.body

    @property
    def prefix_len(self) -> int:
        return len(self.header) + 1 if self.header is not None else 0

    def to_document(self, offset: int) -> int:
        """The document offset of character `offset` of `text`."""
        if offset < self.prefix_len:
            return self.header_start + min(offset, self.prefix_len - 1)
        return self.start + offset - self.prefix_len

    def covers(self, position: int) -> bool:
        return self.start <= position < self.end


class Piece(Protocol):
    """What the merge needs of a piece of the document that was extracted on its own."""

    @property
    def index(self) -> int: ...

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...

    @property
    def text(self) -> str: ...

    def to_document(self, offset: int) -> int: ...

    def covers(self, position: int) -> bool: ...


@dataclass(frozen=True)
class Excerpt:
    """Segments `[a, b)` of the document, in document order, read as one text."""

    index: int
    document: str = field(repr=False, compare=False)
    segments: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not self.segments or any(a >= b for a, b in self.segments) or any(
                b1 > a2 for (_, b1), (a2, _) in zip(self.segments, self.segments[1:], strict=False)):
            raise ValueError("an excerpt is non-empty, ordered, non-overlapping segments")

    @property
    def start(self) -> int:
        return self.segments[0][0]

    @property
    def end(self) -> int:
        return self.segments[-1][1]

    @property
    def text(self) -> str:
        return "".join(self.document[a:b] for a, b in self.segments)

    @property
    def _offsets(self) -> list[int]:
        """Where each segment starts in `text`."""
        out, at = [], 0
        for a, b in self.segments:
            out.append(at)
            at += b - a
        return out

    def to_document(self, offset: int) -> int:
        """The document offset of character `offset` of `text`."""
        offsets = self._offsets
        k = max(0, bisect.bisect_right(offsets, offset) - 1)
        a, b = self.segments[k]
        return min(a + offset - offsets[k], b - 1)

    def covers(self, position: int) -> bool:
        return any(a <= position < b for a, b in self.segments)

    def slice(self, start: int, end: int, index: int) -> Excerpt:
        """Characters `[start, end)` of `text` as an excerpt of the document."""
        out: list[tuple[int, int]] = []
        for (a, b), at in zip(self.segments, self._offsets, strict=True):
            lo, hi = max(start, at), min(end, at + b - a)
            if lo < hi:
                out.append((a + lo - at, a + hi - at))
        return Excerpt(index, self.document, tuple(out))


def cells(line: str) -> list[str]:
    return [c for c in (p.strip() for p in _CELLS.split(line.strip().strip("|"))) if c]


def is_table_row(line: str) -> bool:
    return len(cells(line)) >= 2 and not _RULE.match(line)


def is_heading(line: str) -> bool:
    text = line.strip()
    return bool(text) and (text.startswith("#") or _CAPS_HEADING.match(text) is not None)


def is_table_header(lines: list[Line], i: int) -> bool:
    """A row without digits followed (past rule lines) by a row with them: column names."""
    if not is_table_row(lines[i].text) or any(ch.isdigit() for ch in lines[i].text):
        return False
    for nxt in lines[i + 1:i + 3]:
        if _RULE.match(nxt.text) and nxt.text.strip():
            continue
        return is_table_row(nxt.text) and any(ch.isdigit() for ch in nxt.text)
    return False


def table_headers(lines: list[Line]) -> list[int | None]:
    """Per line, the index of the table header line in force there (None: no table)."""
    headers: list[int | None] = []
    current: int | None = None
    for i, line in enumerate(lines):
        if is_table_header(lines, i):
            current = i
        elif not line.blank and not is_table_row(line.text) and is_heading(line.text):
            current = None
        headers.append(current)
    return headers


def split_lines(text: str, max_chars: int) -> list[Line]:
    """The document's lines; one longer than `max_chars` is cut at whitespace into pieces."""
    out: list[Line] = []
    pos = 0
    for raw in _LINES.findall(text):  # not str.splitlines: a form feed (a page) stays in its line
        body = raw.rstrip("\r\n")
        start = pos
        while len(body) > max_chars:
            cut = body.rfind(" ", 0, max_chars)
            cut = cut + 1 if cut > max_chars // 2 else max_chars
            out.append(Line(start, start + cut, body[:cut]))
            start, body = start + cut, body[cut:]
        out.append(Line(start, pos + len(raw), body))
        pos += len(raw)
    return out


def _break_before(lines: list[Line], i: int) -> int:
    line, prev = lines[i], lines[i - 1]
    if "\f" in line.text[:1] or prev.text.endswith("\f") or ("\f" in prev.text and not prev.text.strip("\f \t")):
        return PAGE
    if is_heading(line.text):
        return HEADING
    if prev.blank and not line.blank:
        return PARAGRAPH
    if is_table_row(line.text) and is_table_row(prev.text):
        return ROW
    return LINE


def split_document(text: str, max_chars: int, overlap_chars: int | None = None) -> list[Chunk]:
    """Chunks of at most about `max_chars` characters (a carried table header adds its own line)
    overlapping by about `overlap_chars` (default: a tenth of a chunk)."""
    if max_chars < 16:
        raise ValueError("max_chars must be at least 16")
    overlap = max_chars // 10 if overlap_chars is None else overlap_chars
    lines = split_lines(text, max_chars)
    if not lines:
        return []
    headers = table_headers(lines)
    chunks: list[Chunk] = []
    first = 0
    while first < len(lines):
        start = lines[first].start
        last = first
        while last + 1 < len(lines) and lines[last + 1].end - start <= max_chars:
            last += 1
        if last + 1 < len(lines):  # not the end: cut at the strongest break in the window's last part
            low = max(first + 1, next((k for k in range(first + 1, last + 2)
                                       if lines[k - 1].end - start >= (1 - BREAK_WINDOW) * max_chars), last + 1))
            candidates = range(low, last + 2)
            cut = max(candidates, key=lambda k: (_break_before(lines, k), k)) if candidates else last + 1
        else:
            cut = len(lines)
        end = lines[cut - 1].end
        header_line = headers[first]
        header = None
        if header_line is not None and header_line < first and is_table_row(lines[first].text):
            header = lines[header_line]
        header_text = header.text.lstrip("\f") if header else None  # a page break is no part of it
        header_at = header.start + len(header.text) - len(header_text) if header and header_text is not None else 0
        chunks.append(Chunk(len(chunks), start, end, text[start:end], header_text, header_at))
        if cut >= len(lines):
            break
        nxt = cut - 1 if cut - 1 > first else cut  # at least the last line again
        while nxt - 1 > first and lines[cut - 1].end - lines[nxt - 1].start <= overlap:
            nxt -= 1
        first = max(nxt, first + 1)
    return chunks
