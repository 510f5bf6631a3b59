"""Shared by the service tests: an app on a scripted engine, reached in process through httpx2's ASGI transport."""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Sequence
from typing import Any

import httpx2
from fastapi import FastAPI

from extractor import GenerationRequest, GenerationResult, ScriptedEngine
from service import Settings, create_app

GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
DOC = "Alice Smith is 34 years old and lives in Lisbon."
BASE = "http://service.test"
#: batch jobs of apps that name no database go here, never into the working directory
_BATCH_DIR = tempfile.TemporaryDirectory(prefix="extractor-test-batches-")


def answer(request: GenerationRequest) -> str:
    """A script for any request: a valid person for the person schema, `{"ok": true}` for the readiness probe."""
    props = request.schema.get("properties", {})
    if "age" in props:
        return GOOD
    if "ok" in props:
        return '{"ok": true}'
    return "{}"  # any other schema: fails validation (422), never a crash


class GatedEngine(ScriptedEngine):
    """A scripted engine whose `generate` waits until the test opens the gate."""

    def __init__(self, outputs: Any = answer) -> None:
        super().__init__(outputs)
        self.gate = asyncio.Event()
        self.entered = 0

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.entered += 1
        await self.gate.wait()
        return await super().generate(requests)


def make_app(engine: Any = None, **settings: Any) -> FastAPI:
    settings.setdefault("batch_db", f"{_BATCH_DIR.name}/batches.sqlite3")
    return create_app(Settings(**settings), engine=engine if engine is not None else ScriptedEngine(answer))


def client(app: FastAPI) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE)


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx2.Response:
    async def go() -> httpx2.Response:
        async with client(app) as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(go())


def text_pdf(*lines: str) -> bytes:
    """A real one-page PDF with a text layer (Helvetica), built with pypdf."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=612, height=792)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
        {NameObject("/F1"): writer._add_object(font)})})
    ops = "".join(f"BT /F1 12 Tf 72 {720 - 16 * i} Td ({line}) Tj ET\n" for i, line in enumerate(lines))
    content = DecodedStreamObject()
    content.set_data(ops.encode("latin-1"))
    page[NameObject("/Contents")] = writer._add_object(content)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
