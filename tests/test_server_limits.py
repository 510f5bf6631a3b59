"""Server limits (issue 17, items 3 and 6): a request head and body have read timeouts, one client
cannot hold more than its share of requests, a client that hangs up cancels its request (and the
engine's work for it), and a flood of one log message is cut short."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from extractor import GenerationRequest, GenerationResult
from service.limits import CancelOnDisconnect, RepeatFilter
from service.server import NoDelayH11Protocol
from tests.service_support import DOC, GatedEngine, client, make_app

GUARD_S = 60  # only stops a hung test


@contextlib.contextmanager
def running_server(**settings: Any) -> Iterator[int]:
    import uvicorn

    app = make_app(**settings)
    protocol = type("TestProtocol", (NoDelayH11Protocol,), {"header_timeout_s": settings.get("header_timeout_s", 10)})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=protocol, log_config=None, access_log=False, lifespan="off",
                            limit_concurrency=settings.get("max_connections"))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(GUARD_S)


def test_a_connection_that_never_finishes_its_head_is_closed() -> None:
    with running_server(header_timeout_s=0.5) as port:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.settimeout(GUARD_S)
        slow.sendall(b"POST /extract/person HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert slow.recv(1024) == b""  # closed by the server, no response
        good = socket.create_connection(("127.0.0.1", port))
        good.settimeout(GUARD_S)
        good.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert good.recv(1024).startswith(b"HTTP/1.1 200")


def test_a_body_that_does_not_arrive_in_time_gets_408() -> None:
    with running_server(body_timeout_s=0.5) as port:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.settimeout(GUARD_S)
        slow.sendall(b"POST /extract/person HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 100\r\n\r\nAlice")
        head = slow.recv(4096)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert b"request-timeout" in head or b"request-timeout" in slow.recv(4096)


def test_one_client_gets_429_past_its_share_and_others_are_served() -> None:
    engine = GatedEngine()
    app = make_app(engine, max_per_client=2)

    async def go() -> None:
        async with client(app) as c:
            held = [asyncio.ensure_future(c.post("/extract/person", json={"text": DOC})) for _ in range(2)]
            while engine.entered < 2:
                await asyncio.sleep(0.01)
            third = await c.post("/extract/person", json={"text": DOC})
            assert third.status_code == 429, third.text
            assert third.json()["code"] == "too-many-requests" and third.headers["retry-after"]
            engine.gate.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert (await c.post("/extract/person", json={"text": DOC})).status_code == 200

    asyncio.run(go())


def test_a_client_that_hangs_up_cancels_its_request_and_the_engine_work() -> None:
    cancelled = asyncio.Event()

    class Held(GatedEngine):
        async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
            try:
                return await super().generate(requests)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    engine = Held()
    app = make_app(engine)

    async def go() -> None:
        hang_up = asyncio.Event()
        messages = [{"type": "http.request", "body": b'{"text": "' + DOC.encode() + b'"}', "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await hang_up.wait()
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/extract/person", "raw_path": b"/extract/person", "query_string": b"",
                 "headers": [(b"content-type", b"application/json"), (b"host", b"x")], "client": ("1.2.3.4", 5),
                 "server": ("x", 80), "root_path": ""}
        request = asyncio.ensure_future(app(scope, receive, send))
        while engine.entered < 1:
            await asyncio.sleep(0.01)
        hang_up.set()
        await asyncio.wait_for(request, GUARD_S)
        assert cancelled.is_set()  # the engine call was cancelled: its work stops
        assert not any(m["type"] == "http.response.body" and m.get("body") for m in sent)

    asyncio.run(go())


def test_cancel_on_disconnect_leaves_a_finished_request_alone() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def go() -> None:
        messages = [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]
        sent: list[Any] = []

        async def receive() -> Any:
            return messages.pop(0) if messages else await asyncio.Event().wait()

        async def send(message: Any) -> None:
            sent.append(message)

        await CancelOnDisconnect(app)({"type": "http"}, receive, send)
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]

    asyncio.run(go())


def test_a_repeated_log_message_is_dropped_past_its_burst_then_counted() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.flood")
    logger.propagate = False
    handler = Keep()
    flood = RepeatFilter(burst=5, window_s=3600)
    handler.addFilter(flood)
    logger.addHandler(handler)
    try:
        for i in range(1000):
            logger.error("Exception in callback %s", i)
        logger.error("another message")
        assert len(records) == 6  # five of the flood, the other message
        flood._seen[("test.flood", logging.ERROR, "Exception in callback %s")][0] -= 7200  # the window ends
        logger.error("Exception in callback %s", "again")
        assert "995 similar messages dropped" in records[-2].getMessage()
        assert records[-1].getMessage() == "Exception in callback again"
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("name", ["header_timeout_s", "body_timeout_s", "max_connections", "max_per_client"])
def test_the_limits_are_settings(name: str) -> None:
    from service import Settings

    assert getattr(Settings.from_env({f"EXTRACTOR_{name.upper()}": "7"}), name) == 7


def test_by_default_one_client_may_fill_what_a_process_holds() -> None:
    """A pipeline at full speed (256 in flight from one address, vllm-http's default in flight) is
    never refused for being one client: the default per-client bound is in flight plus waiting."""
    from service import Settings

    settings = Settings(engine="vllm-http").resolved()
    assert settings.max_inflight == 256
    assert settings.max_per_client == 256 + settings.max_waiting + 1
    assert Settings(engine="vllm-http", max_inflight=8, max_waiting=2).resolved().max_per_client == 11
    assert Settings(engine="vllm-http", max_per_client=5).resolved().max_per_client == 5
