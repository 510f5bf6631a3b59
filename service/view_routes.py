"""The HTML view of the service (`extractor.view.html` renders it):

    GET  /view                     a form: pick a schema, paste a document
    POST /view                     the form posted (application/x-www-form-urlencoded): extracts with
                                   spans and confidence, shows the document with its values highlighted
    GET  /view/batches/{id}        a batch job's finished items, highlighted (`?limit=`, 200 by default)

The pages run no script and load nothing (a Content-Security-Policy says so); every piece of
document text is escaped. With API keys on, POST /view takes the key from the usual headers or
the form's `api_key` field (a browser sends no headers of its own), and the batch view, like
every batch route, from the headers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Query, Request
from fastapi.params import Depends as DependsParam
from starlette.responses import HTMLResponse

from extractor.contracts.contract import Task
from extractor.errors import (
    EmptyDocument,
    ExtractorError,
    InvalidRequest,
    UndecodableDocument,
    UnsupportedMediaType,
    http_status,
)
from extractor.pipeline.documents import check_text
from extractor.view.html import CSP, ViewForm, ViewItem, item_from_result, render_page
from service import openapi
from service.auth import ApiKeys
from service.batch_store import BatchStore
from service.models import RequestOptions
from service.pipeline import Pipeline
from service.settings import Settings
from service.upload import media_type, read_body

FORM_TYPE = "application/x-www-form-urlencoded"
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}
_HTML: dict[int | str, dict[str, Any]] = {200: {"content": {"text/html": {"schema": {"type": "string"}}},
                                                "description": "an HTML page"}}
FORM_BODY: dict[str, Any] = {
    "required": True,
    "content": {FORM_TYPE: {"schema": {
        "type": "object",
        "properties": {"schema": {"type": "string"}, "text": {"type": "string"},
                       "api_key": {"type": "string", "description": "when API keys are on (or send the headers)"}},
        "required": ["schema", "text"],
    }}},
}


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _form_fields(raw: bytes) -> dict[str, str]:
    try:
        parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=8)
    except UnicodeDecodeError as exc:
        raise UndecodableDocument("the form is not valid UTF-8") from exc
    except ValueError as exc:  # too many fields
        raise InvalidRequest(f"malformed form: {exc}") from exc
    return {key: values[0] for key, values in parsed.items()}


def install(app: FastAPI, *, pipeline: Pipeline, lookup: Callable[[str], Task[Any]], names: Callable[[], Sequence[str]],
            settings: Settings, keys: ApiKeys, store: BatchStore, secured: list[DependsParam]) -> None:
    def form(schema: str | None = None, text: str = "") -> ViewForm:
        return ViewForm(schemas=list(names()), schema=schema, text=text, api_key_field=keys.enabled)

    @app.get("/view", tags=["view"], response_class=HTMLResponse, responses=_HTML,
             summary="A form: paste a document, see its extraction highlighted")
    async def view_form() -> HTMLResponse:
        return _page(render_page([], title="extractor", form=form()))

    @app.post("/view", tags=["view"], response_class=HTMLResponse, responses=_HTML,
              openapi_extra={"requestBody": FORM_BODY}, summary="Extract from the posted form; an HTML page")
    async def view_extract(request: Request) -> HTMLResponse:
        schema, text = None, ""
        try:
            kind, _ = media_type(request.headers.get("content-type"))
            if kind != FORM_TYPE:
                raise UnsupportedMediaType(f"send the form as {FORM_TYPE}")
            fields = _form_fields(await read_body(request, settings.max_body_bytes))
            schema, text = fields.get("schema"), fields.get("text", "")
            keys.check(request.headers.get("authorization"),
                       request.headers.get("x-api-key") or fields.get("api_key") or None)
            if not schema:
                raise InvalidRequest("pick a schema", errors=["$.schema: field required"])
            task = lookup(schema)
            if not text.strip():
                raise EmptyDocument("paste a document first")
            # too large, NUL (binary data), a lone surrogate: refused as the other routes refuse them
            check_text(text, max_chars=settings.max_document_chars)
            request.state.log.update(schema=task.name, source="view", chars=len(text))
            outcome = await pipeline.extract(task, text, RequestOptions(spans=True, confidence=True))
        except ExtractorError as exc:
            request.state.log["error"] = exc.code
            notice = f"{exc.code}: {exc}"
            shown = text if len(text) <= settings.max_document_chars else ""
            return _page(render_page([], title="extractor", notice=notice, form=form(schema, shown)), http_status(exc))
        item = item_from_result(outcome.extraction.to_dict(), text=text, fallback_id="document")
        return _page(render_page([item], title=f"extractor: {task.name}", form=form(task.name, text)))

    @app.get("/view/batches/{batch_id}", tags=["view"], response_class=HTMLResponse, dependencies=secured,
             responses={**_HTML, **openapi.AUTH_RESPONSES, 404: openapi.problem("no batch job with that id")},
             summary="A batch job's finished items, values highlighted in their documents")
    async def view_batch(request: Request, batch_id: str,
                         limit: int = Query(default=200, ge=1, le=2000, description="at most this many items")) -> HTMLResponse:
        job = await asyncio.to_thread(store.get_job, batch_id)
        request.state.log["batch"] = job.id
        rows = await asyncio.to_thread(store.finished_items, job.id, limit=limit)
        items: list[ViewItem] = []
        for ident, text, line in rows:
            try:
                result = json.loads(line)
            except ValueError:
                result = {"error": {"message": "unreadable result line"}}
            items.append(item_from_result(result, text=text, fallback_id=ident))
        counts = job.counts
        notice = (f"{job.status}: {counts['ok']} ok, {counts['failed']} failed of {job.total}"
                  + (f"; the first {limit} finished shown" if counts["ok"] + counts["failed"] > limit else ""))
        return _page(render_page(items, title=f"batch {job.id} ({job.schema})", notice=notice))
