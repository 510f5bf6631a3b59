"""Errors as RFC 9457 `application/problem+json`.

An `ExtractorError` becomes a problem whose `type` is `urn:extractor:problem:`
+ its `code` and whose status comes from `extractor.errors.http_status` (the
one mapping); its details (`attempts`, `errors`, `path`, ...) become extension
members. 429 and 503 carry `Retry-After`. Framework errors that are no
`ExtractorError` (an unknown route, a wrong method) keep their status with
`type` `about:blank`. Anything unexpected is a 500 problem, never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from extractor.errors import ExtractorError, InvalidRequest, http_status

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:extractor:problem:"
_RETRY_STATUSES = (429, 503)

log = logging.getLogger("extractor.service")


def problem_type(code: str) -> str:
    return TYPE_PREFIX + code


def _title(cls: type[ExtractorError]) -> str:
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()
    return words[:1].upper() + words[1:]


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


def _request_id(request: Request) -> str | None:
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else None


def render(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    # ensure_ascii: a lone surrogate echoed from the request cannot break the encoding
    content = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return Response(content, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def problem_body(exc: ExtractorError, request: Request) -> dict[str, Any]:
    """The problem document of `exc` (also the `error` event of a stream)."""
    fields = getattr(request.state, "log", None)
    if isinstance(fields, dict):
        fields["error"] = exc.code
    body: dict[str, Any] = {k: _json_safe(v) for k, v in exc.details.items()}
    body.update(type=problem_type(exc.code), title=_title(type(exc)), status=http_status(exc), detail=exc.message,
                code=exc.code, request_id=_request_id(request), instance=request.url.path)
    return body


def error_response(exc: ExtractorError, request: Request, *, retry_after_s: int = 1) -> Response:
    status = http_status(exc)
    body = problem_body(exc, request)
    headers = None
    if status in _RETRY_STATUSES:
        hint = exc.details.get("retry_after")
        seconds = int(hint) if isinstance(hint, int | float) and 0 <= hint < 86400 else retry_after_s
        headers = {"Retry-After": str(seconds)}
    return render(body, status, headers)


def install(app: FastAPI, *, retry_after_s: int = 1) -> None:
    async def on_extractor_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ExtractorError)
        return error_response(exc, request, retry_after_s=retry_after_s)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [f"$.{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return error_response(InvalidRequest("the request does not match its model", errors=errors), request)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        body = {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code, "detail": str(exc.detail),
                "code": "http-error", "request_id": _request_id(request), "instance": request.url.path}
        return render(body, exc.status_code, dict(exc.headers) if exc.headers else None)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(ExtractorError("internal error; the request id identifies it in the logs"), request)

    app.add_exception_handler(ExtractorError, on_extractor_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
