"""Request ids and the access log: one JSON line per request.

`X-Request-ID` is taken from the request when it is sane (1-128 of
`[A-Za-z0-9._:-]`), made up otherwise, echoed on the response and written to
the log line and to problem documents. Handlers add fields to the line
through `request.state.log` (a dict). Request counts and latencies go to the
metrics here too, by route template so that paths do not explode the labels.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.limits import RepeatFilter
from service.metrics import Metrics

access_log = logging.getLogger("extractor.access")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class JsonLines(logging.Formatter):
    """Every record as one JSON object; access records carry their fields in `record.fields`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                                "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    handler.addFilter(RepeatFilter())  # a flood of one error (asyncio's, a client's) cannot fill the disk
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # the HTTP clients log every request they make at INFO: one line per engine call would double
    # the log and cost CPU per request; their warnings and errors still come through
    for noisy in ("httpx2", "httpcore2", "httpx", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "(unmatched)"


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        fields: dict[str, Any] = {}
        state["request_id"], state["log"] = request_id, fields
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route(scope)
            self.metrics.request(route, scope["method"], status, seconds)
            access_log.info("request", extra={"fields": {
                "request_id": request_id, "method": scope["method"], "path": scope["path"], "route": route,
                "status": status, "duration_ms": round(seconds * 1000, 1), **fields}})
