"""The batch job routes: create, status, results (streamed JSONL), cancel.

    POST   /batches               JSON {"schema", "items": [{"id", "text"}], "options"}, or JSONL lines
                                  {"id", "text"} (application/x-ndjson, application/jsonl, or a multipart
                                  `file`) with ?schema=NAME; `Idempotency-Key` makes a retry safe
    GET    /batches/{id}          status and counts
    GET    /batches/{id}/results  one JSON line per finished item, in input order
    DELETE /batches/{id}          cancel: items not yet finished are never run

Items whose text is over the character limit or not valid Unicode are taken,
and fail at once with their own error line, as `extract batch` does; the
request is refused only when it cannot be read as a whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.params import Depends as DependsParam
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse, Response, StreamingResponse

from extractor.contracts.contract import Task
from extractor.errors import (
    DocumentError,
    DocumentTooLarge,
    EmptyDocument,
    ExtractorError,
    InvalidRequest,
    MalformedRequest,
    UnsupportedMediaType,
)
from extractor.pipeline.documents import check_text, is_valid_unicode
from extractor.pipeline.many import ItemResult
from service import openapi
from service.batch_store import BatchStore, NewItem
from service.batch_worker import BatchWorker
from service.models import RequestOptions
from service.settings import Settings
from service.upload import _loads, media_type, parse_options, read_body, validation_messages

JSONL_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson"})
ACCEPTED = "application/json, application/x-ndjson, application/jsonl, multipart/form-data"
MAX_ID_CHARS = 512
_KEY = re.compile(r"^[\x21-\x7e]{1,256}$")


class BatchItem(BaseModel):
    id: str | int | None = Field(default=None, description="unique in the batch; default: the item's position")
    text: str


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: str = Field(alias="schema", description="a registered schema name")
    items: list[BatchItem] = Field(min_length=1)
    options: RequestOptions = Field(default_factory=RequestOptions)


class BatchCounts(BaseModel):
    total: int
    pending: int
    running: int
    ok: int
    failed: int
    cancelled: int


class BatchJob(BaseModel):
    id: str
    schema_: str = Field(alias="schema")
    status: Literal["pending", "running", "done", "cancelled"]
    counts: BatchCounts
    options: dict[str, Any]
    created_at: str
    finished_at: str | None
    cancelled_at: str | None
    idempotency_key: str | None
    results: str = Field(description="where the result lines are")


BATCH_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": openapi.REF.format(model="BatchRequest")}},
        "application/x-ndjson": {"schema": {"type": "string", "description": 'one {"id", "text"} object a line'}},
        "multipart/form-data": {"schema": {
            "type": "object",
            "properties": {"file": {"type": "string", "format": "binary", "description": "a JSONL file"},
                           "options": {"type": "string", "description": "a JSON object of RequestOptions"}},
            "required": ["file"],
        }},
    },
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: openapi.problem("no batch job with that id")}


def _item_id(raw: Any, position: int, where: str, errors: list[str]) -> str:
    if raw is None or raw == "":
        return str(position)
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        errors.append(f"{where}.id: must be a string or an integer")
        return str(position)
    ident = str(raw)
    if len(ident) > MAX_ID_CHARS or "\x00" in ident or not is_valid_unicode(ident):
        errors.append(f"{where}.id: at most {MAX_ID_CHARS} characters of valid Unicode, no NUL")
    return ident


def _new_item(ident: str, text: str, position: int, max_chars: int) -> NewItem:
    error: ExtractorError | None = None
    try:
        check_text(text, max_chars=max_chars)
    except EmptyDocument:
        pass  # an empty item is extracted and fails on its own, as it always did
    except DocumentError as exc:
        error = exc
    if error is None:
        return NewItem(ident, text)
    line = json.dumps(ItemResult(ident, position, error=error).to_dict(), ensure_ascii=True, separators=(",", ":"))
    return NewItem(ident, "", error_line=line)


def _jsonl_items(raw: bytes) -> list[tuple[Any, Any, str]]:
    rows: list[tuple[Any, Any, str]] = []
    try:
        # lines end at \n only: U+2028, U+2029 and U+0085 are valid inside JSON strings
        lines = raw.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"the JSONL body is not UTF-8 (byte {exc.start})") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = _loads(line, f"line {n}")
        if not isinstance(row, dict):
            raise InvalidRequest(f"line {n}: expected an object with 'id' and 'text'", errors=[f"line {n}: not an object"])
        rows.append((row.get("id") if row.get("id") is not None else n, row.get("text"), f"line {n}"))
    return rows


async def _multipart(request: Request, raw: bytes, limit: int) -> tuple[bytes, dict[str, str]]:
    async def one() -> AsyncGenerator[bytes, None]:
        yield raw

    parser = MultiPartParser(request.headers, one(), max_files=1, max_fields=4, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise MalformedRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidRequest("a multipart batch needs a `file` part (JSONL)", errors=["$.file: field required"])
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return await file.read(), fields
    finally:
        await form.close()


def _digest(schema: str, options: dict[str, Any], items: list[NewItem]) -> str:
    h = hashlib.sha256(json.dumps([schema, options], sort_keys=True).encode())
    for item in items:
        h.update(json.dumps([item.item_id, item.text, item.error_line], ensure_ascii=True).encode())
    return h.hexdigest()


def install(app: FastAPI, *, store: BatchStore, worker: BatchWorker, lookup: Callable[[str], Task[Any]],
            settings: Settings, secured: list[DependsParam]) -> None:
    async def read_request(request: Request) -> tuple[str, RequestOptions, list[NewItem]]:
        kind, _ = media_type(request.headers.get("content-type"))
        if kind not in JSONL_TYPES and kind not in ("application/json", "multipart/form-data") \
                and not kind.endswith("+json"):
            raise UnsupportedMediaType(f"unsupported content type {kind or '(none)'!r}; send one of {ACCEPTED}",
                                       accepted=ACCEPTED)
        raw = await read_body(request, settings.max_body_bytes)
        schema = request.query_params.get("schema")
        options_raw: Any = request.query_params.get("options")
        rows: list[tuple[Any, Any, str]]
        if kind == "multipart/form-data" or kind in JSONL_TYPES:
            if kind == "multipart/form-data":
                raw, fields = await _multipart(request, raw, settings.max_body_bytes)
                schema = fields.get("schema", schema)
                options_raw = fields.get("options", options_raw)
            rows = _jsonl_items(raw)
            options = parse_options(_loads(options_raw, "`options`") if options_raw else None)
            if not schema:
                raise InvalidRequest("a JSONL batch names its schema: ?schema=NAME", errors=["$.schema: field required"])
        else:
            try:
                body = BatchRequest.model_validate(_loads(raw, "the body"))
            except ValidationError as exc:
                raise InvalidRequest('the body does not match {"schema", "items": [{"id", "text"}], "options"}',
                                     errors=validation_messages(exc)) from exc
            schema, options = body.schema_, body.options
            rows = [(it.id, it.text, f"$.items[{i}]") for i, it in enumerate(body.items)]
        if not rows:
            raise InvalidRequest("the batch has no items", errors=["$.items: at least one item"])
        if len(rows) > settings.batch_max_items:
            raise DocumentTooLarge(f"the batch has {len(rows)} items; the limit is {settings.batch_max_items}",
                                   limit=settings.batch_max_items)
        errors: list[str] = []
        items: list[NewItem] = []
        seen: set[str] = set()
        for position, (raw_id, text, where) in enumerate(rows):
            ident = _item_id(raw_id, position, where, errors)
            if ident in seen:
                errors.append(f"{where}.id: {ident!r} is not unique in the batch")
            seen.add(ident)
            if not isinstance(text, str):
                errors.append(f"{where}.text: a string is required")
                continue
            items.append(_new_item(ident, text, position, settings.max_document_chars))
        if errors:
            raise InvalidRequest(f"{len(errors)} item(s) are invalid", errors=errors[:100])
        return schema, options, items

    @app.post("/batches", tags=["batches"], dependencies=secured, status_code=201,
              responses={201: {"model": BatchJob, "description": "created; `Location` names it"},
                         200: {"model": BatchJob, "description": "the job this `Idempotency-Key` already created"},
                         **openapi.AUTH_RESPONSES,
                         400: openapi.problem("malformed JSON, JSONL or multipart"),
                         404: openapi.problem("unknown schema"),
                         409: openapi.problem("the Idempotency-Key was used with a different body"),
                         413: openapi.problem("body over the byte limit, or too many items"),
                         415: openapi.problem("unsupported content type"),
                         422: openapi.problem("invalid body, items or options")},
              openapi_extra={"requestBody": BATCH_BODY}, summary="Create a batch job")
    async def create_batch(request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        if key is not None and not _KEY.match(key):
            raise InvalidRequest("the Idempotency-Key header is 1 to 256 printable ASCII characters",
                                 errors=["Idempotency-Key: invalid"])
        schema, options, items = await read_request(request)
        task = lookup(schema)
        opts = options.model_dump(exclude_none=True)
        job, created = await asyncio.to_thread(store.create_job, schema=task.name, options=opts, items=items,
                                               digest=_digest(task.name, opts, items), idempotency_key=key)
        request.state.log.update(batch=job.id, schema=task.name, items=job.total, created=created)
        if created:
            worker.wake()
        return JSONResponse(job.to_dict(), status_code=201 if created else 200,
                            headers={"Location": f"/batches/{job.id}"})

    @app.get("/batches/{batch_id}", tags=["batches"], dependencies=secured, response_model=BatchJob,
             responses={**openapi.AUTH_RESPONSES, **_NOT_FOUND}, summary="A batch job's status and counts")
    async def get_batch(request: Request, batch_id: str) -> Response:
        job = await asyncio.to_thread(store.get_job, batch_id)
        request.state.log["batch"] = job.id
        return JSONResponse(job.to_dict())

    @app.delete("/batches/{batch_id}", tags=["batches"], dependencies=secured, response_model=BatchJob,
                responses={**openapi.AUTH_RESPONSES, **_NOT_FOUND}, summary="Cancel a batch job")
    async def cancel_batch(request: Request, batch_id: str) -> Response:
        job = await asyncio.to_thread(store.cancel, batch_id)
        request.state.log["batch"] = job.id
        return JSONResponse(job.to_dict())

    @app.get("/batches/{batch_id}/results", tags=["batches"], dependencies=secured, response_class=StreamingResponse,
             responses={200: {"description": 'one line per finished item: {"id", "data", "meta"} or {"id", "error"}',
                              "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                        **openapi.AUTH_RESPONSES, **_NOT_FOUND},
             summary="A batch job's results, streamed as JSON lines")
    async def batch_results(request: Request, batch_id: str) -> Response:
        job = await asyncio.to_thread(store.get_job, batch_id)  # 404 before the stream starts
        request.state.log["batch"] = job.id

        async def lines() -> AsyncIterator[bytes]:
            after = -1
            while True:
                chunk = await asyncio.to_thread(store.results, job.id, after_seq=after)
                if not chunk:
                    return
                yield "".join(line + "\n" for _, line in chunk).encode("utf-8")
                after = chunk[-1][0]

        return StreamingResponse(lines(), media_type="application/x-ndjson")
