"""The FastAPI app: routes only; each concern lives in its own module.

    POST /extract/{schema}   one typed path per registered schema (JSON, text, markdown, PDF, multipart);
                             ?stream=true: Server-Sent Events as values become final (sse)
    GET  /schemas            registered schemas
    GET  /schemas/{name}     a schema's strict JSON schema
    GET  /healthz            the process is up
    GET  /readyz             the engine answers a real tiny generation
    GET  /metrics            Prometheus
    POST /batches, GET /batches/{id}, GET /batches/{id}/results, DELETE /batches/{id}
                             durable batch jobs (batch_routes; run by batch_worker, stored by batch_store)
    GET  /view, POST /view, GET /view/batches/{id}
                             HTML pages: extractions highlighted in their documents (view_routes)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.params import Depends as DependsParam
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response, StreamingResponse

from extractor.adapters.registry import AdapterRegistry
from extractor.contracts.contract import Task
from extractor.contracts.registry import SchemaRegistry, default_registry
from extractor.engines import Engine
from extractor.errors import ExtractionFailed, UnknownSchema
from extractor.pipeline.options import ExtractOptions
from service import batch_routes, openapi, problems, view_routes
from service.access_log import RequestContext
from service.auth import ApiKeys
from service.batch_store import BatchStore, database_url
from service.batch_worker import BatchWorker
from service.engine import EngineHolder
from service.limits import CancelOnDisconnect, ClientLimit
from service.metrics import Metrics
from service.models import response_model
from service.pdf import PdfLimits, PdfReaders
from service.pipeline import Pipeline
from service.queue import AdmissionQueue
from service.settings import Settings
from service.sse import SSE_MEDIA_TYPE, sse
from service.upload import read_upload


class SchemaInfo(BaseModel):
    name: str
    version: str
    instructions: str
    path: str


def _version() -> str:
    try:
        return version("extractor")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"


# documentation of the two ways to send a key; `ApiKeys.check` reads the headers itself
_API_KEY_HEADER = Security(APIKeyHeader(name="X-API-Key", auto_error=False))
_BEARER = Security(HTTPBearer(auto_error=False))


def _key_check(keys: ApiKeys) -> list[DependsParam]:
    """The API-key dependency (documented as security schemes only when keys are on)."""
    if not keys.enabled:
        return []

    async def require_key(request: Request, _header: str | None = _API_KEY_HEADER,
                          _bearer: HTTPAuthorizationCredentials | None = _BEARER) -> None:
        keys.check(request.headers.get("authorization"), request.headers.get("x-api-key"))

    return [Depends(require_key)]


def create_app(settings: Settings | None = None, *, engine: Engine | None = None,
               registry: SchemaRegistry | None = None) -> FastAPI:
    """The service. `engine` (an `Engine` object) overrides `settings.engine` (a name, loaded at start-up)."""
    settings = settings if settings is not None else Settings.from_env()
    if engine is not None and settings.max_inflight is None:  # an engine object: its class's serving defaults
        settings = settings.merged(max_inflight=type(engine).capacity(settings.engine_options).inflight, workers=1)
    settings = settings.resolved()
    assert settings.max_inflight is not None and settings.max_per_client is not None
    registry = registry if registry is not None else default_registry()
    for module in settings.schemas:
        registry.load_module(module)
    keys = ApiKeys.load(settings.api_keys, settings.api_keys_file)
    metrics = Metrics()
    adapters = AdapterRegistry.load(settings.adapters)
    adapters.check(registry.get)  # each adapter's schema and version, before anything starts
    if engine is not None:
        for adapter in adapters:
            adapter.check_base(getattr(engine, "base_config", None), engine.model)
    engines = EngineHolder(settings.engine, settings.engine_options, engine=engine,
                           retry_after_s=settings.retry_after_s, ready_timeout_s=settings.ready_timeout_s,
                           ready_cache_s=settings.ready_cache_s, adapters=adapters)
    # the slots open adapt so that a request holds its slot at most a third of the deadline (service/queue.py)
    queue = AdmissionQueue(settings.max_inflight, settings.max_waiting, retry_after_s=settings.retry_after_s,
                           on_change=metrics.queue_depth, target_hold_s=settings.deadline_s / 3)
    pipeline = Pipeline(engines, queue, metrics, deadline_s=settings.deadline_s,
                        defaults=ExtractOptions(max_retries=settings.max_retries), adapters=adapters)
    batches = BatchStore(database_url(settings.batch_db))

    def lookup(name: str) -> Task[Any]:
        if name not in registry.names():  # registered names only: never a file path from a URL
            raise UnknownSchema(f"unknown schema {name!r}; known: {', '.join(registry.names())}", schema=name)
        return registry.get(name)

    worker = BatchWorker(batches, pipeline, lookup, claim=settings.batch_claim, lease_s=settings.batch_lease_s,
                         poll_s=settings.batch_poll_s, max_engine_errors=settings.batch_max_engine_errors)

    pdf_readers = PdfReaders(workers=settings.pdf_workers, limits=PdfLimits(
        max_pages=settings.pdf_max_pages, max_content_bytes=settings.pdf_max_content_bytes,
        timeout_s=settings.pdf_timeout_s))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engines.start()
        worker.start()  # resumes unfinished batch jobs: pending items, and expired leases of a dead worker
        yield
        await worker.stop()
        await engines.close()
        batches.dispose()
        pdf_readers.close()

    app = FastAPI(title="extractor", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="Typed, validated records from documents. Errors are RFC 9457 problems whose `type` is "
                              "`urn:extractor:problem:` + a stable code.")
    app.state.settings, app.state.engines, app.state.queue, app.state.metrics = settings, engines, queue, metrics
    app.state.batches, app.state.batch_worker = batches, worker
    problems.install(app, retry_after_s=settings.retry_after_s)
    # outermost last: the access log sees every request; then the per-client limit, before any
    # work (the API-key check included); then the cancel-on-disconnect of the request itself
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(ClientLimit, max_per_client=settings.max_per_client, retry_after_s=settings.retry_after_s)
    app.add_middleware(RequestContext, metrics=metrics)
    openapi.install(app, models=(batch_routes.BatchRequest,))
    secured = _key_check(keys)
    openapi.install_docs(app, secured)  # with keys on, the API's description needs a key too

    async def extract(request: Request, name: str) -> Response:
        task = lookup(name)
        doc = await read_upload(request, max_body_bytes=settings.max_body_bytes,
                                max_document_chars=settings.max_document_chars, pdf=pdf_readers.text)
        fields: dict[str, Any] = request.state.log
        fields.update(schema=task.name, source=doc.source, chars=len(doc.text))
        if request.query_params.get("stream", "").lower() in ("true", "1", "yes"):
            return StreamingResponse(sse(pipeline.stream(task, doc.text, doc.options), request),
                                     media_type=SSE_MEDIA_TYPE, headers={"Cache-Control": "no-cache"})
        try:
            outcome = await pipeline.extract(task, doc.text, doc.options)
        except ExtractionFailed as exc:
            fields["attempts"] = exc.attempts
            raise
        meta = outcome.extraction.meta
        engine_ms, queue_ms = round(outcome.engine_s * 1000, 1), round(outcome.queue_s * 1000, 1)
        fields.update(attempts=meta.attempts, engine_ms=engine_ms, queue_ms=queue_ms,
                      tokens=meta.prompt_tokens + meta.completion_tokens)
        body = outcome.extraction.to_dict()
        body["meta"].update(engine_ms=engine_ms, queue_ms=queue_ms)
        timing = f"queue;dur={queue_ms}, engine;dur={engine_ms}, extract;dur={round(meta.latency_ms, 1)}"
        return JSONResponse(body, headers={"Server-Timing": timing})

    def typed_endpoint(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await extract(request, name)
        return endpoint

    for name in registry.names():
        task = registry.get(name)
        app.add_api_route(f"/extract/{name}", typed_endpoint(name), methods=["POST"], tags=["extract"],
                          response_model=response_model(task), responses=openapi.EXTRACT_RESPONSES,
                          openapi_extra={"requestBody": openapi.EXTRACT_BODY}, dependencies=secured,
                          operation_id=f"extract_{name}", summary=f"Extract a {name} (v{task.version})",
                          description=task.instructions)

    @app.post("/extract/{schema}", include_in_schema=False, dependencies=secured)
    async def extract_any(request: Request, schema: str) -> Response:
        return await extract(request, schema)

    @app.get("/schemas", tags=["schemas"], dependencies=secured, responses=openapi.AUTH_RESPONSES)
    async def list_schemas() -> list[SchemaInfo]:
        tasks = [registry.get(n) for n in registry.names()]
        return [SchemaInfo(name=t.name, version=t.version, instructions=t.instructions, path=f"/extract/{t.name}")
                for t in tasks]

    @app.get("/schemas/{name}", tags=["schemas"], dependencies=secured,
             responses={**openapi.AUTH_RESPONSES, 404: openapi.problem("unknown schema")})
    async def show_schema(name: str) -> dict[str, Any]:
        return lookup(name).strict_schema

    batch_routes.install(app, store=batches, worker=worker, lookup=lookup, settings=settings, secured=secured)
    view_routes.install(app, pipeline=pipeline, lookup=lookup, names=registry.names, settings=settings, keys=keys,
                        store=batches, secured=secured)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: openapi.retry_problem("the engine does not answer")})
    async def readyz() -> dict[str, Any]:
        return await engines.probe()

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {metrics.content_type: {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
