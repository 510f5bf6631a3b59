"""What counts as a document: non-empty Unicode text, not binary, within a size limit.

One set of checks for every way in (CLI files and stdin, batch inputs, the service's
bodies, the SDK), each raising the `DocumentError` that says what is wrong:

    EmptyDocument ........ empty, whitespace only, or invisible characters only (what the model
                           would read is empty: `extractor.pipeline.visible`)
    UndecodableDocument .. not UTF-8, NUL characters (binary data, or UTF-16 read as UTF-8),
                           or a lone surrogate (a `\\ud800` JSON escape), which no tokenizer takes
    DocumentTooLarge ..... over the character limit
"""

from __future__ import annotations

from extractor.errors import DocumentError, DocumentTooLarge, EmptyDocument, UndecodableDocument
from extractor.pipeline.visible import visible_text

#: characters a document may hold when read from a file or a request (the service's default too);
#: far past any model context, yet refused before a tokenizer spends seconds on megabytes
MAX_DOCUMENT_CHARS = 200_000


def _label(name: str | None) -> str:
    return f"{name}: " if name else ""


def is_valid_unicode(text: str) -> bool:
    """False for text holding a lone surrogate (a `\\ud800` JSON escape), which no encoder takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_unicode(text: str, name: str | None = None) -> str:
    """Refuse text that cannot be encoded (a lone surrogate); return it unchanged."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UndecodableDocument(f"{_label(name)}the text holds a character that is not valid Unicode "
                                  f"(a lone surrogate at {exc.start})") from exc
    return text


def check_text(text: str, name: str | None = None, *, max_chars: int | None = MAX_DOCUMENT_CHARS,
               allow_nul: bool = False, empty_hint: str = "") -> str:
    """The checks of a decoded document, cheapest first; returns the text unchanged. Every way
    in (CLI, batch files, the service's bodies, batch items and view form) calls this one."""
    if max_chars is not None and len(text) > max_chars:
        raise DocumentTooLarge(f"{_label(name)}the document is {len(text)} characters; the limit is {max_chars}",
                               limit=max_chars)
    check_unicode(text, name)
    if not allow_nul and "\x00" in text:
        raise UndecodableDocument(f"{_label(name)}the text holds NUL characters (at {text.index(chr(0))}): "
                                  "binary data, or UTF-16 read as UTF-8, not a text document")
    if not text.strip():
        raise EmptyDocument(f"{_label(name)}the document is empty{empty_hint}")
    if not visible_text(text).text.strip():  # refused here, before a request queues for the engine
        raise EmptyDocument(f"{_label(name)}the document is empty (it holds only invisible characters){empty_hint}")
    return text


def decode_document(raw: bytes, name: str | None = None, *, max_chars: int | None = MAX_DOCUMENT_CHARS) -> str:
    """UTF-8 bytes (a leading BOM dropped) -> checked text."""
    if max_chars is not None and len(raw) > 4 * max_chars:  # UTF-8 takes at most 4 bytes a character
        raise DocumentTooLarge(f"{_label(name)}the document is over {4 * max_chars} bytes; the limit is {max_chars} "
                               "characters", limit=max_chars)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UndecodableDocument(f"{_label(name)}not UTF-8 text (byte {exc.start})") from exc
    return check_text(text, name, max_chars=max_chars)


def read_document_file(name: str) -> str:
    """Read a document (a path, or `-` for stdin) as checked UTF-8 text, never more bytes than
    the limit allows (a 10 GB file is not read whole)."""
    import sys

    try:
        if name == "-":
            raw = sys.stdin.buffer.read(4 * MAX_DOCUMENT_CHARS + 1)
        else:
            with open(name, "rb") as f:
                raw = f.read(4 * MAX_DOCUMENT_CHARS + 1)
    except OSError as exc:
        raise DocumentError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    return decode_document(raw, name)
