"""The remote SDK: `Client` and `AsyncClient` talk to `extract serve` with
the call shape of the in-process `Extractor`, so moving to a server is one line:

    extractor = Extractor()                                          # in process
    extractor = Client("http://127.0.0.1:8080", api_key="...")      # remote
    person = extractor.extract(Person, "Alice Smith, 34, lives in Lisbon.")

Server errors come back as the same `ExtractorError` subclasses (the problem
`type` names the class); `details` holds the problem's members plus `status`,
`request_id` and `retry_after`. 429 and 503 are retried (`retries` times,
honouring Retry-After up to `max_backoff_s`). Pass `transport=` (e.g.
`httpx2.ASGITransport(app)`) to talk to an app in process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal, TypeVar, overload

import httpx2
from pydantic import BaseModel, ValidationError

from extractor.contracts.contract import Task, task_from_model
from extractor.contracts.registry import SchemaRegistry, default_registry
from extractor.errors import (
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    ExtractionFailed,
    ExtractorError,
    SchemaRejected,
    UnknownSchema,
    error_class,
)
from extractor.grounding.spans import Span
from extractor.pipeline.options import DEFAULT_CONCURRENCY, ExtractOptions
from extractor.pipeline.result import Extraction, Meta

M = TypeVar("M", bound=BaseModel)
TYPE_PREFIX = "urn:extractor:problem:"
_PROBLEM_MEMBERS = ("type", "title", "detail", "code", "instance")
_RETRYABLE = (EngineOverloaded, EngineUnavailable)
Schema = str | type[BaseModel] | Task[Any]


@lru_cache(maxsize=1)
def _default_registry() -> SchemaRegistry:
    return default_registry()


@lru_cache(maxsize=256)
def _task_of(model: type[BaseModel]) -> Task[Any]:
    return task_from_model(model)


def _resolve(schema: Schema, registry: SchemaRegistry | None) -> tuple[str, type[BaseModel] | None]:
    """The schema's name on the server, and the model to type the data with (None: a plain dict).

    A name is typed with the model registered under it locally (the built-in
    schemas, or `registry`), as `Extractor` does; an unknown name gives dicts.
    """
    if isinstance(schema, Task):
        return schema.name, schema.model
    if isinstance(schema, str):
        local = registry if registry is not None else _default_registry()
        return schema, local.get(schema).model if schema in local.names() else None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return _task_of(schema).name, schema
    raise SchemaRejected("$", f"not a schema: {schema!r}")


def problem_error(response: httpx2.Response) -> ExtractorError:
    """The typed error of an error response (RFC 9457 problem, or anything else by its status)."""
    body: Any = None
    if "json" in response.headers.get("content-type", ""):
        try:
            body = response.json()
        except ValueError:
            body = None
    retry_after = response.headers.get("retry-after")
    extra: dict[str, Any] = {"status": response.status_code, "request_id": response.headers.get("x-request-id")}
    if retry_after is not None and retry_after.isdigit():
        extra["retry_after"] = int(retry_after)
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return _by_status(response.status_code, response.text[:200], extra)
    detail = str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
    members = {k: v for k, v in body.items() if k not in _PROBLEM_MEMBERS}
    for key, value in extra.items():
        if members.get(key) is None:
            members[key] = value
    problem_type: str = body["type"]
    if not problem_type.startswith(TYPE_PREFIX):
        return _by_status(response.status_code, detail, members)
    cls = error_class(problem_type.removeprefix(TYPE_PREFIX))
    if issubclass(cls, ExtractionFailed):
        attempts, errors = members.pop("attempts", 0), members.pop("errors", [])
        last = members.pop("last_output", None)
        exc: ExtractorError = cls(detail, attempts=int(attempts), errors=list(errors),
                                  last_output=last if isinstance(last, str) else None)
        exc.details.update(members)
        return exc
    if issubclass(cls, SchemaRejected):
        exc = cls(str(members.pop("path", "$")), str(members.pop("reason", detail)))
        exc.details.update(members)
        return exc
    return cls(detail, **members)


def _by_status(status: int, detail: str, details: dict[str, Any]) -> ExtractorError:
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 429:
        return EngineOverloaded(message, **details)
    if status in (502, 503):
        return EngineUnavailable(message, **details)
    if status == 504:
        return EngineTimeout(message, **details)
    if status == 404:
        return UnknownSchema(message, **details)
    return ExtractorError(message, **details)


def _extraction(body: Any, model: type[BaseModel] | None, text: str) -> Extraction[Any]:
    try:
        meta = body["meta"]
        tokens = meta.get("tokens", {})
        data = body["data"]
        m = Meta(schema=body["schema"], version=str(body["version"]), engine=meta["engine"], model=meta["model"],
                 attempts=int(meta["attempts"]), errors=list(meta.get("errors", [])),
                 prompt_tokens=int(tokens.get("prompt", 0)), completion_tokens=int(tokens.get("completion", 0)),
                 latency_ms=float(meta.get("latency_ms", 0.0)),
                 spans={path: [Span.from_dict(s) for s in found] for path, found in meta["spans"].items()}
                 if meta.get("spans") is not None else None,
                 confidence={path: float(p) for path, p in meta["confidence"].items()}
                 if meta.get("confidence") is not None else None, long=meta.get("long"),
                 changed=dict(meta["changed"]) if isinstance(meta.get("changed"), dict) else None)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExtractorError(f"the server's response is not an extraction: {exc!r}") from exc
    if model is not None:
        try:
            data = ([model.model_validate(d, context={"document": text}) for d in data] if isinstance(data, list)
                    else model.model_validate(data, context={"document": text}))
        except ValidationError as exc:
            raise ExtractorError(f"the server's {m.schema} v{m.version} record does not fit the local model "
                                 f"{model.__name__}: {exc}") from exc
    return Extraction(data=data, meta=m)


class _SseParser:
    """Server-Sent Events lines -> the events of `POST /extract/{schema}?stream=true`, as
    `Extractor.astream` yields them; an `error` event raises its `ExtractorError`."""

    def __init__(self) -> None:
        self.kind = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        if line.startswith("event:"):
            self.kind = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].lstrip())
        elif not line and self.data:
            kind, body = self.kind, json.loads("\n".join(self.data))
            self.kind, self.data = "message", []
            if kind == "error":
                details = {k: v for k, v in body.items() if k not in ("detail", "code")}
                raise error_class(str(body.get("code", "")))(str(body.get("detail", "stream failed")), **details)
            return {"event": kind, **body}
        return None


def _headers(api_key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    out = {"Accept": "application/json, application/problem+json"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    out.update(headers or {})
    return out


def _body(text: str, options: ExtractOptions | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The request body. `options` (an `ExtractOptions`: the fields it sets; or a mapping, which
    may also hold the request's `timeout_s`) and keywords named like `ExtractOptions` fields
    (`spans=True`) become the request's `options`; an unset one keeps the server's default."""
    opts = dict(options.model_dump(include=options.model_fields_set)) if isinstance(options, ExtractOptions) \
        else dict(options or {})
    unknown = sorted(set(overrides) - set(ExtractOptions.exposed_fields()))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; options are {', '.join(ExtractOptions.exposed_fields())}")
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return {"text": text, "options": opts}


def _transport_error(exc: httpx2.TransportError, base_url: str) -> ExtractorError:
    if isinstance(exc, httpx2.TimeoutException):
        return EngineTimeout(f"no answer from {base_url} in time: {exc}")
    return EngineUnavailable(f"cannot reach {base_url}: {exc}")


def _backoff(exc: ExtractorError, attempt: int, cap: float) -> float:
    hint = exc.details.get("retry_after")
    return float(min(cap, hint if isinstance(hint, int | float) else 0.25 * 2**attempt))


class Client:
    """Synchronous client of an extraction service."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 120.0, retries: int = 2,
                 max_backoff_s: float = 10.0, headers: dict[str, str] | None = None,
                 transport: httpx2.BaseTransport | None = None, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.max_backoff_s = max_backoff_s
        self._http = httpx2.Client(base_url=self.base_url, headers=_headers(api_key, headers), timeout=timeout,
                                   transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.post(path, json=payload)
            except httpx2.TransportError as exc:
                error = _transport_error(exc, self.base_url)
            else:
                if response.is_success:
                    return response.json()
                error = problem_error(response)
            if not isinstance(error, _RETRYABLE) or attempt == self.retries:
                raise error
            time.sleep(_backoff(error, attempt, self.max_backoff_s))
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(self, schema: Schema, text: str, options: ExtractOptions | Mapping[str, Any] | None = None,
               **overrides: Any) -> Iterator[dict[str, Any]]:
        """The events of `POST /extract/{schema}?stream=true` as they come (see `Extractor.astream`):
        `item` / `record` / `field` events, each final, then `result`. Failures raise."""
        name, _ = _resolve(schema, self.registry)
        with self._http.stream("POST", f"/extract/{name}", params={"stream": "true"},
                               json=_body(text, options, overrides)) as response:
            if not response.is_success:
                response.read()
                raise problem_error(response)
            parser = _SseParser()
            for line in response.iter_lines():
                if (event := parser.feed(line)) is not None:
                    yield event

    def run(self, schema: Schema, text: str, options: ExtractOptions | Mapping[str, Any] | None = None,
            **overrides: Any) -> Extraction[Any]:
        """Extract with metadata: an `Extraction` (data + meta), as `Extractor.run`; `options` and
        keywords named like `ExtractOptions` fields (`spans=True`) go to the server as the request's
        `options`."""
        name, model = _resolve(schema, self.registry)
        body = _body(text, options, overrides)
        return _extraction(self._post(f"/extract/{name}", body), model, text)

    @overload
    def extract(self, schema: type[M], text: str, *, options: ExtractOptions | Mapping[str, Any] | None = None) -> M: ...
    @overload
    def extract(self, schema: str | Task[Any], text: str, *, options: ExtractOptions | Mapping[str, Any] | None = None) -> Any: ...
    def extract(self, schema: Any, text: str, *, options: ExtractOptions | Mapping[str, Any] | None = None) -> Any:
        """The validated value: a model instance (for a model, or a name registered locally), else a dict."""
        return self.run(schema, text, options=options).data

    @overload
    def extract_many(self, schema: type[M], texts: Sequence[str], *, return_exceptions: Literal[False] = False,
                     concurrency: int = DEFAULT_CONCURRENCY) -> list[M]: ...
    @overload
    def extract_many(self, schema: type[M], texts: Sequence[str], *, return_exceptions: Literal[True],
                     concurrency: int = DEFAULT_CONCURRENCY) -> list[M | ExtractorError]: ...
    @overload
    def extract_many(self, schema: str | Task[Any], texts: Sequence[str], *, return_exceptions: bool = False,
                     concurrency: int = DEFAULT_CONCURRENCY) -> list[Any]: ...
    def extract_many(self, schema: Any, texts: Sequence[str], *, return_exceptions: bool = False,
                     concurrency: int = DEFAULT_CONCURRENCY) -> list[Any]:
        """One value per text, in order, sent `concurrency` at a time (the server batches them)."""
        from concurrent.futures import ThreadPoolExecutor

        def one(text: str) -> Any:
            try:
                return self.extract(schema, text)
            except ExtractorError as exc:
                if return_exceptions:
                    return exc
                raise

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, texts))

    def schemas(self) -> list[dict[str, Any]]:
        response = self._http.get("/schemas")
        if not response.is_success:
            raise problem_error(response)
        out: list[dict[str, Any]] = response.json()
        return out


class AsyncClient:
    """Asynchronous client; `extract`/`run`/`extract_many` are coroutines (also as
    `aextract`/`arun`/`aextract_many`, the names `Extractor` uses inside an event loop)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 120.0, retries: int = 2,
                 max_backoff_s: float = 10.0, headers: dict[str, str] | None = None,
                 transport: httpx2.AsyncBaseTransport | None = None, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.max_backoff_s = max_backoff_s
        self._http = httpx2.AsyncClient(base_url=self.base_url, headers=_headers(api_key, headers), timeout=timeout,
                                        transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, payload: dict[str, Any]) -> Any:
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.post(path, json=payload)
            except httpx2.TransportError as exc:
                error = _transport_error(exc, self.base_url)
            else:
                if response.is_success:
                    return response.json()
                error = problem_error(response)
            if not isinstance(error, _RETRYABLE) or attempt == self.retries:
                raise error
            await asyncio.sleep(_backoff(error, attempt, self.max_backoff_s))
        raise AssertionError("unreachable")  # pragma: no cover

    async def stream(self, schema: Schema, text: str, options: ExtractOptions | Mapping[str, Any] | None = None,
                     **overrides: Any) -> AsyncIterator[dict[str, Any]]:
        """`Client.stream`, asynchronously."""
        name, _ = _resolve(schema, self.registry)
        async with self._http.stream("POST", f"/extract/{name}", params={"stream": "true"},
                                     json=_body(text, options, overrides)) as response:
            if not response.is_success:
                await response.aread()
                raise problem_error(response)
            parser = _SseParser()
            async for line in response.aiter_lines():
                if (event := parser.feed(line)) is not None:
                    yield event

    async def run(self, schema: Schema, text: str, options: ExtractOptions | Mapping[str, Any] | None = None,
                  **overrides: Any) -> Extraction[Any]:
        name, model = _resolve(schema, self.registry)
        body = _body(text, options, overrides)
        return _extraction(await self._post(f"/extract/{name}", body), model, text)

    @overload
    async def extract(self, schema: type[M], text: str, *, options: ExtractOptions | Mapping[str, Any] | None = None) -> M: ...
    @overload
    async def extract(self, schema: str | Task[Any], text: str, *, options: ExtractOptions | Mapping[str, Any] | None = None) -> Any: ...
    async def extract(self, schema: Any, text: str, *, options: ExtractOptions | Mapping[str, Any] | None = None) -> Any:
        return (await self.run(schema, text, options=options)).data

    @overload
    async def extract_many(self, schema: type[M], texts: Sequence[str], *, return_exceptions: Literal[False] = False,
                           concurrency: int = DEFAULT_CONCURRENCY) -> list[M]: ...
    @overload
    async def extract_many(self, schema: type[M], texts: Sequence[str], *, return_exceptions: Literal[True],
                           concurrency: int = DEFAULT_CONCURRENCY) -> list[M | ExtractorError]: ...
    @overload
    async def extract_many(self, schema: str | Task[Any], texts: Sequence[str], *, return_exceptions: bool = False,
                           concurrency: int = DEFAULT_CONCURRENCY) -> list[Any]: ...
    async def extract_many(self, schema: Any, texts: Sequence[str], *, return_exceptions: bool = False,
                           concurrency: int = DEFAULT_CONCURRENCY) -> list[Any]:
        semaphore = asyncio.Semaphore(max(1, concurrency))

        async def one(text: str) -> Any:
            async with semaphore:
                try:
                    return await self.extract(schema, text)
                except ExtractorError as exc:
                    if return_exceptions:
                        return exc
                    raise

        return list(await asyncio.gather(*(one(t) for t in texts)))

    arun = run
    aextract = extract
    aextract_many = extract_many

    async def schemas(self) -> list[dict[str, Any]]:
        response = await self._http.get("/schemas")
        if not response.is_success:
            raise problem_error(response)
        out: list[dict[str, Any]] = response.json()
        return out
