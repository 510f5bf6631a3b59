"""Limits in front of everything: a slow client, a greedy client and a flood of errors cannot
take the service down.

- `LimitedH11Protocol`: a connection that has not sent a complete request head within
  `header_timeout_s` is closed (uvicorn has no such timeout: one client holding thousands of
  half-sent heads reached the file-descriptor limit). uvicorn's `limit_concurrency` bounds the
  connections and `timeout_keep_alive` the idle ones (service/server.py).
- `read_body_within`: the body must arrive within `body_timeout_s` (408).
- `ClientLimit`: at most `max_per_client` requests in flight per client address (429), before
  any other work, the API-key check included.
- `CancelOnDisconnect`: a client that hangs up cancels its request, and so the engine's work
  for it (the local engine drops the row, vLLM aborts the request, vllm-http closes its call).
- `RepeatFilter`: a log record repeated more than `burst` times within `window_s` is dropped,
  and one line then says how many were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from extractor.errors import TooManyRequests
from service.problems import problem_type, render

log = logging.getLogger("extractor.service")


class HeaderTimeoutMixin:
    """Closes a connection whose request head is not complete `header_timeout_s` after its first
    byte (or after the connection opened)."""

    header_timeout_s: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._waiting_for_head():
            return
        transport: Any = getattr(self, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.close()

    def _waiting_for_head(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is None or bool(getattr(cycle, "response_complete", False))


class LimitedH11Protocol(HeaderTimeoutMixin, H11Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_head():
            self._arm_head_timer()  # a head starts (again, on a kept-alive connection)
        super().data_received(data)
        if not self._waiting_for_head():
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"


class ClientLimit:
    """At most `max_per_client` requests in flight per client address; the rest get 429 at once."""

    def __init__(self, app: ASGIApp, max_per_client: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.max_per_client = max_per_client
        self.retry_after_s = retry_after_s
        self.inflight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = _client(scope)
        if self.inflight[client] >= self.max_per_client:
            exc = TooManyRequests(f"this client has {self.max_per_client} requests in flight; the limit is "
                                  f"{self.max_per_client}", limit=self.max_per_client)
            response = render({"type": problem_type(exc.code), "title": "Too many requests", "status": 429,
                               "detail": exc.message, "code": exc.code, "instance": scope.get("path")},
                              429, {"Retry-After": str(self.retry_after_s)})
            await response(scope, receive, send)
            return
        self.inflight[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight[client] -= 1
            if self.inflight[client] <= 0:
                del self.inflight[client]


class CancelOnDisconnect:
    """Runs the request as a task and cancels it when the client disconnects before its response
    is complete. Once the body is read, this middleware owns `receive` (it only ever says
    `http.disconnect` then); the app's later `receive()` calls wait for that."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read, gone = asyncio.Event(), asyncio.Event()
        responded = False

        async def app_receive() -> Message:
            if body_read.is_set():
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                responded = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, app_receive, app_send))

        async def watch() -> None:
            await body_read.wait()
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                if not responded:
                    task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await task
        except asyncio.CancelledError:
            if not gone.is_set() or responded:
                raise  # cancelled from outside (shutdown): not ours to swallow
            log.info("client disconnected: request cancelled", extra={"fields": {"path": scope.get("path")}})
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()


class RepeatFilter(logging.Filter):
    """Drops a record (same logger, level and message template) past `burst` within `window_s`,
    then logs one line saying how many were dropped."""

    def __init__(self, burst: int = 10, window_s: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeat_summary", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] > self.window_s:
            if entry is not None and entry[2]:
                logging.getLogger(record.name).log(
                    record.levelno, "%d similar messages dropped in %.0f s: %s", int(entry[2]), self.window_s,
                    str(record.msg)[:200], extra={"repeat_summary": True})
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[key] = [now, 1, 0]
            return True
        entry[1] += 1
        if entry[1] > self.burst:
            entry[2] += 1
            return False
        return True
