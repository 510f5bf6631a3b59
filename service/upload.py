"""From an HTTP request body to a document's text and the request's options.

    application/json (or +json)     {"text": "...", "options": {...}}
    text/plain, text/markdown       the document itself (charset parameter honoured, UTF-8 by default)
    application/pdf                 a PDF; its text layer is read with pypdf
    multipart/form-data             a `file` part (text, markdown or PDF, by its type or extension)
                                    or a `text` field, plus an optional `options` field (JSON)

The body is read against the byte limit as it streams in (413 past it), and
the decoded text against the character limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from extractor.errors import (
    DocumentTooLarge,
    InvalidRequest,
    MalformedRequest,
    RequestTimeout,
    UndecodableDocument,
    UnsupportedMediaType,
)
from extractor.pipeline.documents import check_text
from service.models import ExtractRequest, RequestOptions

TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/x-markdown"})
PDF_TYPE = "application/pdf"
TEXT_EXTENSIONS = (".txt", ".text", ".md", ".markdown")
ACCEPTED = "application/json, text/plain, text/markdown, application/pdf, multipart/form-data"


@dataclass(frozen=True)
class Upload:
    text: str
    options: RequestOptions
    #: how it came: json, text, pdf, or file:NAME for an upload
    source: str


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """`text/plain; charset=latin-1` -> ("text/plain", {"charset": "latin-1"})."""
    if not header:
        return "", {}
    kind, *params = header.split(";")
    parsed = {}
    for p in params:
        key, _, value = p.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), parsed


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise DocumentTooLarge(f"the body is {int(declared)} bytes; the limit is {limit}", limit=limit)
    chunks, size = [], 0
    settings = getattr(request.app.state, "settings", None)
    timeout_s: float = getattr(settings, "body_timeout_s", 30.0)
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise DocumentTooLarge(f"the body is over the limit of {limit} bytes", limit=limit)
                chunks.append(chunk)
    except ClientDisconnect as exc:
        raise MalformedRequest("the client disconnected before sending the whole body") from exc
    except TimeoutError as exc:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from exc
    return b"".join(chunks)


def decode_text(raw: bytes, charset: str | None = None) -> str:
    encoding = (charset or "utf-8").lower()
    if encoding in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # a leading BOM is no part of the document
    try:
        return raw.decode(encoding)
    except LookupError as exc:
        raise UnsupportedMediaType(f"unknown charset {charset!r}") from exc
    except UnicodeDecodeError as exc:
        raise UndecodableDocument(f"not {charset or 'UTF-8'} text (byte {exc.start})") from exc
    except (UnicodeError, ValueError) as exc:  # codecs such as punycode raise these on bad data
        raise UndecodableDocument(f"not {charset} text: {exc}"[:300]) from exc


def parse_options(raw: Any) -> RequestOptions:
    try:
        return RequestOptions.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise InvalidRequest("invalid options", errors=validation_messages(exc, prefix="$.options")) from exc


def validation_messages(exc: ValidationError, prefix: str = "$") -> list[str]:
    return [f"{'.'.join([prefix, *(str(p) for p in e['loc'])])}: {e['msg']}" for e in exc.errors()]


def _loads(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints, deep nesting
        raise MalformedRequest(f"{what} is not valid JSON: {exc}") from exc


def from_json(raw: bytes) -> Upload:
    try:
        request = ExtractRequest.model_validate(_loads(raw, "the body"))
    except ValidationError as exc:
        raise InvalidRequest("the body does not match {\"text\": string, \"options\": object}",
                             errors=validation_messages(exc)) from exc
    return Upload(request.text, request.options, "json")


#: reads a PDF's text (service/pdf.py: in a child process, within limits, cancelled with the request)
PdfReader = Callable[[bytes], Awaitable[str]]


async def _file_text(upload: UploadFile, pdf: PdfReader) -> tuple[str, str]:
    raw = await upload.read()
    kind, params = media_type(upload.content_type)
    name = (upload.filename or "").lower()
    if kind == PDF_TYPE or name.endswith(".pdf"):
        return await pdf(raw), f"file:{upload.filename}"
    if kind in TEXT_TYPES or name.endswith(TEXT_EXTENSIONS):
        return decode_text(raw, params.get("charset")), f"file:{upload.filename}"
    raise UnsupportedMediaType(f"cannot read a file of type {upload.content_type!r} named {upload.filename!r}; "
                               "send text, markdown or PDF")


async def _one(raw: bytes) -> AsyncGenerator[bytes, None]:
    yield raw


async def from_multipart(request: Request, raw: bytes, limit: int, pdf: PdfReader) -> Upload:
    parser = MultiPartParser(request.headers, _one(raw), max_files=1, max_fields=4, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise MalformedRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        file, text, options = form.get("file"), form.get("text"), form.get("options")
        if isinstance(options, UploadFile):
            raise InvalidRequest("`options` must be a form field holding a JSON object, not a file")
        opts = parse_options(_loads(options, "the `options` field") if options else None)
        if isinstance(file, UploadFile):
            body, source = await _file_text(file, pdf)
            return Upload(body, opts, source)
        if isinstance(text, str):
            return Upload(text, opts, "text")
        raise InvalidRequest("a multipart body needs a `file` part or a `text` field",
                             errors=["$.file: field required"])
    finally:
        await form.close()


async def read_upload(request: Request, *, max_body_bytes: int, max_document_chars: int, pdf: PdfReader) -> Upload:
    """The request's document and options, or the `ExtractorError` that says what is wrong with it."""
    kind, params = media_type(request.headers.get("content-type"))
    readers = {"application/json", PDF_TYPE, "multipart/form-data", *TEXT_TYPES}
    if kind not in readers and not kind.endswith("+json"):
        raise UnsupportedMediaType(f"unsupported content type {kind or '(none)'!r}; send one of {ACCEPTED}",
                                   accepted=ACCEPTED)
    raw = await read_body(request, max_body_bytes)
    if kind == "multipart/form-data":
        doc = await from_multipart(request, raw, max_body_bytes, pdf)
    elif kind in TEXT_TYPES:
        doc = Upload(decode_text(raw, params.get("charset")), RequestOptions(), "text")
    elif kind == PDF_TYPE:
        doc = Upload(await pdf(raw), RequestOptions(), "pdf")
    else:
        doc = from_json(raw)
    hint = "; a scanned PDF needs OCR first" if doc.source == "pdf" or doc.source.endswith(".pdf") else ""
    check_text(doc.text, max_chars=max_document_chars, empty_hint=hint)
    return doc
