"""PDF parsing limits (issue 17, item 2): pages, decoded content bytes and time, in child
processes that are killed past the time limit or when the request is cancelled."""

from __future__ import annotations

import asyncio
import io

import pytest

from extractor.errors import DocumentTooLarge
from service.pdf import PdfLimits, PdfReaders, pdf_text
from tests.service_support import call, make_app, text_pdf


def shared_stream_pdf(pages: int = 20, ops: int = 60_000) -> bytes:
    """`pages` pages that share one compressed content stream of `ops` text operators (the issue's
    4 KB-per-MB PDF: about a minute of pypdf CPU when read whole)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    resources = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})})
    content = DecodedStreamObject()
    content.set_data(b"BT /F1 12 Tf 72 720 Td (x) Tj ET\n" * ops)
    shared = writer._add_object(content.flate_encode())
    for _ in range(pages):
        page = writer.add_blank_page(width=612, height=792)
        page[NameObject("/Resources")] = resources
        page[NameObject("/Contents")] = shared
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def blank_pdf(pages: int) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=100, height=100)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_a_shared_content_stream_counts_once_per_page_and_is_refused_before_extraction() -> None:
    pdf = shared_stream_pdf()
    assert len(pdf) < 64 * 1024
    with pytest.raises(DocumentTooLarge, match="content streams exceed"):
        pdf_text(pdf, PdfLimits(max_content_bytes=16 * 1024 * 1024))


def test_too_many_pages_are_refused() -> None:
    with pytest.raises(DocumentTooLarge, match="3 pages; the limit is 2"):
        pdf_text(blank_pdf(3), PdfLimits(max_pages=2))


def test_a_slow_pdf_is_killed_at_its_time_limit_and_the_next_one_is_read() -> None:
    slow = shared_stream_pdf()  # within the default content limit, but a minute of parsing

    async def go() -> None:
        readers = PdfReaders(workers=1, limits=PdfLimits(max_content_bytes=10**9, timeout_s=1.0))
        try:
            with pytest.raises(DocumentTooLarge, match="took longer than 1 s"):
                await readers.text(slow)
            readers.limits = PdfLimits(timeout_s=120.0)
            assert "Alice" in await readers.text(text_pdf("Alice Smith, 34"))
        finally:
            readers.close()

    asyncio.run(go())


def test_a_cancelled_read_kills_its_child() -> None:
    slow = shared_stream_pdf()

    async def go() -> None:
        readers = PdfReaders(workers=1, limits=PdfLimits(max_content_bytes=10**9, timeout_s=600.0))
        try:
            task = asyncio.ensure_future(readers.text(slow))
            while not readers._waiters._threads:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert readers._idle == []  # the busy child was killed, not kept
            readers.limits = PdfLimits(timeout_s=120.0)
            assert "Bob" in await readers.text(text_pdf("Bob Stone, 40"))
        finally:
            readers.close()

    asyncio.run(go())


def test_the_service_answers_a_hostile_pdf_with_413() -> None:
    app = make_app(pdf_max_content_bytes=4 * 1024 * 1024)
    r = call(app, "POST", "/extract/person", content=shared_stream_pdf(), headers={"content-type": "application/pdf"})
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"
    ok = call(app, "POST", "/extract/person", content=text_pdf("Alice Smith is 34 and lives in Lisbon."),
              headers={"content-type": "application/pdf"})
    assert ok.status_code == 200, ok.text
