"""The remote SDK: `Client` over a real uvicorn server on the loopback, `AsyncClient` in process;
server errors come back as the same typed errors as in process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from extractor import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    EmptyDocument,
    EngineOverloaded,
    EngineUnavailable,
    Extraction,
    ExtractionFailed,
    Extractor,
    ExtractorError,
    QueueFull,
    ScriptedEngine,
    Unauthorized,
    UnknownSchema,
)
from schemas import Person
from service.auth import hash_key
from tests.service_support import BASE, DOC, GOOD, GatedEngine, answer, make_app

ALICE = Person(name="Alice Smith", age=34, city="Lisbon", email=None)


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def live_url() -> Iterator[str]:
    """The app on a scripted engine, served by uvicorn on a loopback port in a thread."""
    import uvicorn

    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(make_app(api_keys=(hash_key("k"),)), log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_moving_from_local_to_remote_is_one_line(live_url: str) -> None:
    def work(extractor: Any) -> tuple[Person, Extraction[Any], list[Any]]:
        person = extractor.extract(Person, DOC)
        result = extractor.run(Person, DOC)
        many = extractor.extract_many(Person, [DOC, DOC, " "], return_exceptions=True)
        return person, result, many

    local = work(Extractor(ScriptedEngine(answer)))
    with Client(live_url, api_key="k") as client:
        remote = work(client)
    for person, result, many in (local, remote):
        assert person == ALICE and isinstance(person, Person)
        assert result.data == ALICE and result.meta.attempts == 1 and result.meta.schema == "person"
        assert many[:2] == [ALICE, ALICE] and isinstance(many[2], EmptyDocument)
    assert remote[1].meta.engine == "fake" and remote[1].meta.completion_tokens == 2


def test_sync_client_errors_are_typed(live_url: str) -> None:
    with Client(live_url, api_key="k") as client:
        with pytest.raises(UnknownSchema, match="nope"):
            client.extract("nope", DOC)
        assert client.extract("person", DOC) == ALICE  # a name registered locally is typed like Extractor does
        assert [s["name"] for s in client.schemas()][:1] == ["invoice"]
    with Client(live_url, api_key="wrong") as client, pytest.raises(Unauthorized) as info:
        client.extract(Person, DOC)
    assert info.value.details["status"] == 401 and info.value.details["request_id"]


def test_async_client_in_process() -> None:
    engine = ScriptedEngine(["{", "{", "{", GOOD])
    app = make_app(engine)

    async def scenario() -> None:
        async with AsyncClient(BASE, transport=httpx2.ASGITransport(app=app)) as client:
            with pytest.raises(ExtractionFailed) as info:
                await client.extract(Person, DOC)
            assert info.value.attempts == 3 and len(info.value.errors) == 3 and info.value.last_output == "{"
            assert info.value.details["status"] == 422
            result = await client.arun(Person, DOC, options={"max_retries": 0})
            assert result.data == ALICE
            with pytest.raises(EmptyDocument):
                await client.aextract(Person, "")

    asyncio.run(scenario())


def test_async_extract_many_is_batched_by_the_server() -> None:
    engine = GatedEngine()
    app = make_app(engine)

    async def scenario() -> list[Person]:
        async with AsyncClient(BASE, transport=httpx2.ASGITransport(app=app)) as client:
            task = asyncio.create_task(client.extract_many(Person, [DOC] * 5, concurrency=5))
            for _ in range(500):
                if engine.entered == 5:
                    break
                await asyncio.sleep(0.002)
            assert engine.entered == 5  # all five in the engine together
            engine.gate.set()
            return await task

    assert asyncio.run(scenario()) == [ALICE] * 5


def test_queue_full_and_deadline_come_back_typed() -> None:
    engine = GatedEngine()
    app = make_app(engine, max_inflight=1, max_waiting=0, deadline_s=0.3)

    async def scenario() -> None:
        async with AsyncClient(BASE, transport=httpx2.ASGITransport(app=app), retries=0) as client:
            first = asyncio.create_task(client.extract(Person, DOC))
            for _ in range(500):
                if engine.entered:
                    break
                await asyncio.sleep(0.002)
            with pytest.raises(QueueFull) as full:
                await client.extract(Person, DOC)
            assert isinstance(full.value, EngineOverloaded) and full.value.details["retry_after"] == 1
            with pytest.raises(DeadlineExceeded):
                await first

    asyncio.run(scenario())


def test_retries_honour_retry_after_then_succeed() -> None:
    calls: list[int] = []
    success = {"schema": "person", "version": "1", "data": json.loads(GOOD),
               "meta": {"attempts": 1, "errors": [], "latency_ms": 1.0, "tokens": {"prompt": 1, "completion": 2},
                        "engine": "fake", "model": "m", "engine_ms": 0.5, "queue_ms": 0.1}}

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(1)
        assert request.headers["authorization"] == "Bearer key"
        if len(calls) == 1:
            return httpx2.Response(429, headers={"Retry-After": "0", "content-type": "application/problem+json"},
                                   json={"type": "urn:extractor:problem:queue-full", "title": "Queue full",
                                         "status": 429, "detail": "full", "code": "queue-full"})
        if len(calls) == 2:
            return httpx2.Response(502, text="<html>bad gateway</html>", headers={"content-type": "text/html"})
        return httpx2.Response(200, json=success)

    client = Client("http://remote", api_key="key", transport=httpx2.MockTransport(handler), max_backoff_s=0.01)
    assert client.extract(Person, DOC) == ALICE
    assert len(calls) == 3


def test_non_problem_errors_and_unreachable_servers_map_by_status() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503, text="upstream down")

    with pytest.raises(EngineUnavailable, match="HTTP 503"):
        Client("http://remote", transport=httpx2.MockTransport(handler), retries=0).extract(Person, DOC)
    with Client(f"http://127.0.0.1:{_free_socket().getsockname()[1]}", retries=1, max_backoff_s=0.01) as client:
        with pytest.raises(EngineUnavailable, match="cannot reach"):
            client.extract(Person, DOC)


def test_a_problem_of_unknown_type_is_the_base_error() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(418, json={"type": "urn:extractor:problem:from-the-future", "title": "t",
                                          "status": 418, "detail": "newer server", "code": "from-the-future"})

    with pytest.raises(ExtractorError, match="newer server") as info:
        Client("http://remote", transport=httpx2.MockTransport(handler)).extract(Person, DOC)
    assert type(info.value) is ExtractorError and info.value.details["status"] == 418


def test_extract_serve_from_the_command_line() -> None:
    """`extract serve` with an engine that cannot be reached: up, not ready, 503 with Retry-After, JSON logs."""
    port = _free_socket().getsockname()[1]
    dead = _free_socket().getsockname()[1]
    env = {**os.environ, "EXTRACTOR_MAX_WAITING": "3", "EXTRACTOR_ENGINE": "local"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "extractor", "serve", "--engine", "vllm-http", "--port", str(port),
         "--engine-option", f"base_url=http://127.0.0.1:{dead}/v1", "--engine-option", "http_retries=0",
         "--engine-option", "model=m"],
        env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx2.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.05)
        assert httpx2.get(f"{url}/healthz").json() == {"status": "ok"}
        ready = httpx2.get(f"{url}/readyz", headers={"X-Request-ID": "probe-1"}, timeout=30)
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert ready.json()["code"] == "engine-unavailable"
        with Client(url, retries=0) as client, pytest.raises(EngineUnavailable):
            client.extract(Person, DOC)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert len(lines) == len(stderr.splitlines()), stderr  # every line is JSON
    access = [line for line in lines if line["logger"] == "extractor.access"]
    assert any(a["request_id"] == "probe-1" and a["status"] == 503 and a["route"] == "/readyz" for a in access)
    assert any(a["route"] == "/extract/person" and a["error"] == "engine-unavailable" for a in access)
