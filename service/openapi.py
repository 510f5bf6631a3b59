"""The OpenAPI document: FastAPI's, plus what it cannot infer from handlers
that read their own bodies: the request body of each extraction path (JSON,
text, markdown, PDF or a multipart upload) and the problem responses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.models import ExtractRequest, Problem
from service.problems import MEDIA_TYPE

REF = "#/components/schemas/{model}"

EXTRACT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": REF.format(model="ExtractRequest")}},
        "text/plain": {"schema": {"type": "string"}},
        "text/markdown": {"schema": {"type": "string"}},
        "application/pdf": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {
            "type": "object",
            "properties": {
                "file": {"type": "string", "format": "binary", "description": "a text, markdown or PDF file"},
                "options": {"type": "string", "description": "a JSON object of RequestOptions"},
            },
            "required": ["file"],
        }},
    },
}


def problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {MEDIA_TYPE: {"schema": {"$ref": REF.format(model="Problem")}}}}


def retry_problem(description: str) -> dict[str, Any]:
    return {**problem(description), "headers": {"Retry-After": {"schema": {"type": "integer"},
                                                                 "description": "seconds to wait"}}}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {401: problem("missing or unknown API key (when keys are configured)")}

EXTRACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    400: problem("malformed JSON, multipart or PDF, or text that is not in its charset"),
    413: problem("body over the byte limit, or document over the character or token budget"),
    415: problem("unsupported content type or file type"),
    422: problem("invalid body or options, empty document, or no valid output after every retry "
                 "(`attempts` and `errors` included)"),
    429: retry_problem("the queue is full"),
    503: retry_problem("the engine is starting, down or failing"),
    504: problem("past the request's deadline"),
}


def _components(models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def install(app: FastAPI, models: tuple[type[BaseModel], ...] = ()) -> None:
    """FastAPI's document, plus the components of `models` (request bodies the handlers read themselves)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in _components((ExtractRequest, Problem, *models)).items():
                schemas.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


#: where the Swagger UI's own files are served from (no CDN: `/docs` works offline)
DOCS_ASSETS = "/docs-assets"


def install_docs(app: FastAPI, dependencies: Sequence[Any] = ()) -> None:
    """`/openapi.json`, `/docs` (Swagger UI) and `/redoc`, behind `dependencies` (the API-key check
    when keys are on), with the pages' scripts and styles served by the service itself from the
    `fastapi-offline` package instead of FastAPI's default CDN (a blank page offline). The app must
    be created with `docs_url=None, redoc_url=None, openapi_url=None`."""
    from pathlib import Path

    import fastapi_offline
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=static), name="docs-assets")
    openapi_url = "/openapi.json"

    @app.get(openapi_url, include_in_schema=False, dependencies=list(dependencies))
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=list(dependencies))
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False, dependencies=list(dependencies))
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)
