"""Batch inputs and the resumable JSONL output of `extract batch`.

Inputs: JSONL (`{"id", "text"}` per line), a folder of text files (ids are
the relative paths), CSV or Parquet with a text column (ids from an id
column, else the row number).

Output: one JSON line per finished document, written with a single
`write(2)` and flushed, so a `kill -9` leaves at most one partial last line.
On a rerun `ResultsFile` drops that partial line, reads the ids already
written and the batch skips them: nothing finished is lost, nothing is
written twice.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from extractor.errors import DocumentError, DocumentTooLarge, UndecodableDocument
from extractor.pipeline.documents import MAX_DOCUMENT_CHARS, check_text
from extractor.pipeline.many import Document

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")


def read_documents(path: str | Path, *, text_field: str = "text", id_field: str = "id") -> Iterator[Document]:
    """Documents of a batch input, streamed. Raises `DocumentError` on an unreadable input."""
    p = Path(path)
    if p.is_dir():
        yield from _folder(p)
    elif not p.exists():
        raise DocumentError(f"{p}: no such file or folder")
    elif p.suffix == ".csv":
        yield from _csv(p, text_field, id_field)
    elif p.suffix in (".parquet", ".pq"):
        yield from _parquet(p, text_field, id_field)
    else:
        yield from _jsonl(p, text_field, id_field)


def _record(row: dict[str, Any], n: int, where: str, text_field: str, id_field: str) -> Document:
    text = row.get(text_field)
    if not isinstance(text, str):
        raise DocumentError(f"{where}: no string {text_field!r} field")
    raw_id = row.get(id_field)
    ident = str(raw_id) if raw_id not in (None, "") else str(n)
    return _checked(ident, text, where)


def _checked(ident: str, text: str, where: str) -> Document:
    """A document, or (binary, not valid Unicode, too large) a per-item error: never the batch's."""
    try:
        return Document(ident, check_text(text, where))
    except DocumentError as exc:
        return Document(ident, "", error=exc)


def _jsonl(p: Path, text_field: str, id_field: str) -> Iterator[Document]:
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            # bytes that are not UTF-8 spoil their line's text, not the file: undecodable ones come
            # through as lone surrogates, and the item fails alone (`check_text`)
            line = raw.decode("utf-8", errors="surrogateescape")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise DocumentError(f"{p}:{n}: not a JSON line: {type(exc).__name__}: {exc}"[:300]) from exc
            if not isinstance(row, dict):
                raise DocumentError(f"{p}:{n}: expected an object with {id_field!r} and {text_field!r}")
            yield _record(row, n, f"{p}:{n}", text_field, id_field)


def _csv(p: Path, text_field: str, id_field: str) -> Iterator[Document]:
    csv.field_size_limit(16 * 1024 * 1024)
    with p.open(encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or text_field not in reader.fieldnames:
            raise DocumentError(f"{p}: no {text_field!r} column (columns: {reader.fieldnames})")
        for n, row in enumerate(reader, 1):
            yield _record(dict(row), n, f"{p}:{n + 1}", text_field, id_field)


def _parquet(p: Path, text_field: str, id_field: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DocumentError("reading Parquet needs pyarrow: pip install '.[parquet]'") from None
    table = pq.ParquetFile(p)
    if text_field not in table.schema_arrow.names:
        raise DocumentError(f"{p}: no {text_field!r} column (columns: {table.schema_arrow.names})")
    columns = [c for c in (id_field, text_field) if c in table.schema_arrow.names]
    n = 0
    for batch in table.iter_batches(columns=columns, batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield _record(row, n, f"{p}: row {n}", text_field, id_field)


def _folder(p: Path) -> Iterator[Document]:
    for f in sorted(p.rglob("*")):
        if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES:
            ident = f.relative_to(p).as_posix()
            if f.stat().st_size > 4 * MAX_DOCUMENT_CHARS:  # not read at all: refused by its size
                yield Document(ident, "", error=DocumentTooLarge(
                    f"{ident}: {f.stat().st_size} bytes; the limit is {MAX_DOCUMENT_CHARS} characters"))
                continue
            try:
                yield _checked(ident, f.read_text(encoding="utf-8"), ident)
            except UnicodeDecodeError as exc:  # a per-item error, not the batch's
                yield Document(ident, "", error=UndecodableDocument(f"{ident}: not UTF-8 text (byte {exc.start})"))


class DoneIds:
    """The ids already in a results file, in constant memory per id: a sorted array of 64-bit
    hashes (8 bytes an id; a million ids take 8 MB, where a set of strings took about 100 MB).
    Two ids that share a 64-bit hash (about one chance in 10^7 for a million ids) would skip the
    second one; nothing else is approximate."""

    def __init__(self) -> None:
        self._hashes = array("Q")
        self._sorted = True

    @staticmethod
    def _hash(ident: str) -> int:
        return int.from_bytes(hashlib.blake2b(ident.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")

    def add(self, ident: str) -> None:
        self._hashes.append(self._hash(ident))
        self._sorted = False

    def __contains__(self, ident: object) -> bool:
        if not isinstance(ident, str):
            return False
        if not self._sorted:
            self._hashes = array("Q", sorted(self._hashes))
            self._sorted = True
        h = self._hash(ident)
        i = bisect.bisect_left(self._hashes, h)
        return i < len(self._hashes) and self._hashes[i] == h

    def __len__(self) -> int:
        return len(self._hashes)


def _drop_partial_last_line(path: Path) -> None:
    """A line cut by a crash was never finished: truncate the file after its last newline
    (read backwards from the end, never whole)."""
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = pos - step + newline + 1
                if end < size:
                    f.truncate(end)
                return
            pos -= step
        f.truncate(0)  # no complete line at all


def _result_id(line: bytes) -> tuple[str, bool]:
    """(id, ok) of one results line."""
    row = json.loads(line)
    return str(row["id"]), "data" in row


class ResultsFile:
    """An append-only JSONL results file that knows which ids it holds (streamed: the file is
    never read whole). With `retry_failed`, the lines of failed ids are dropped first (the file
    rewritten line by line) so that those ids run again."""

    def __init__(self, path: str | Path, *, retry_failed: bool = False) -> None:
        self.path = Path(path)
        self.done = DoneIds()
        self.counts = {"ok": 0, "failed": 0, "dropped_failed": 0}
        if self.path.exists():
            _drop_partial_last_line(self.path)
            if retry_failed:
                self._drop_failed()
            self._scan()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _lines(self) -> Iterator[tuple[int, bytes, str, bool]]:
        with self.path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ident, ok = _result_id(line)
                except (ValueError, KeyError, TypeError) as exc:
                    raise DocumentError(f"{self.path}:{n}: not a results line; refusing to append to it") from exc
                yield n, line, ident, ok

    def _scan(self) -> None:
        for _, _, ident, ok in self._lines():
            self.done.add(ident)
            self.counts["ok" if ok else "failed"] += 1

    def _drop_failed(self) -> None:
        tmp = self.path.with_name(self.path.name + ".retry-failed.tmp")
        with tmp.open("wb") as out:
            for _, line, _, ok in self._lines():
                if ok:
                    out.write(line)
                else:
                    self.counts["dropped_failed"] += 1
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)

    def write(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
