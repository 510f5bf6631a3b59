"""Engine faults, against a fake vLLM OpenAI server on loopback (tests/fake_openai.py): down at
start, going down mid-batch and coming back, slower than the deadline, invalid JSON, a body that
is no completion, truncated output, 429 and 503. The vllm-http engine retries with backoff then
raises typed errors; the service's /readyz turns false and clients get Retry-After; batch jobs
lose nothing and resume; an item the engine keeps failing on fails alone after a capped number
of tries instead of coming back forever."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI

from extractor import EngineError, EngineOverloaded, EngineTimeout, EngineUnavailable, ExtractionFailed, Extractor
from extractor.cli.main import main
from extractor.engines.vllm_http import VllmHttpEngine
from schemas import Person
from service import Settings, create_app
from service.batch_store import BatchStore, NewItem, database_url
from tests.fake_openai import GOOD, FakeOpenAI, Reply, default_reply, fake_openai
from tests.service_support import DOC, client

PROBLEM = "application/problem+json"


def engine_for(server: FakeOpenAI, **options: Any) -> VllmHttpEngine:
    return VllmHttpEngine(server.url, **{"backoff_s": 0.01, "http_retries": 2, **options})


def service(server: FakeOpenAI, tmp_path: Path, **settings: Any) -> FastAPI:
    """The service with the vllm-http engine by name (as `extract serve --engine vllm-http` builds it)."""
    options = {"base_url": server.url, "backoff_s": 0.01, "http_retries": 2, **settings.pop("engine_options", {})}
    defaults: dict[str, Any] = {"ready_cache_s": 0.0, "batch_poll_s": 0.02, "batch_claim": 4,
                                "batch_db": str(tmp_path / "batches.sqlite3")}
    return create_app(Settings(engine="vllm-http", engine_options=options, **{**defaults, **settings}))


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        async with client(app) as c:
            yield c


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def person_bodies(server: FakeOpenAI) -> list[dict[str, Any]]:
    return [b for b in server.bodies if "age" in b["response_format"]["json_schema"]["schema"]["properties"]]


# -- the engine: retries with backoff, then typed errors --------------------------------------------

def test_backoff_is_exponential_jittered_honours_retry_after_and_is_capped() -> None:
    engine = VllmHttpEngine("http://127.0.0.1:9/v1", backoff_s=0.5, max_backoff_s=3.0)
    for attempt in range(4):
        delays = [engine.backoff_delay(attempt) for _ in range(200)]
        low, high = 0.5 * 2 ** attempt * 0.5, 0.5 * 2 ** attempt * 1.5
        assert all(min(low, 3.0) <= d <= min(high, 3.0) for d in delays)
        if low < 3.0:
            assert len(set(delays)) > 1  # jittered: clients that failed together do not retry together
    assert engine.backoff_delay(0, retry_after=2.0) == 2.0
    assert engine.backoff_delay(0, retry_after=3600.0) == 3.0  # a server cannot park us for an hour
    assert engine.backoff_delay(5) == 3.0


def test_vllm_down_at_start_is_engine_unavailable_after_retries() -> None:
    with fake_openai(start=False) as server:  # nothing listens on its port
        with pytest.raises(EngineUnavailable, match="cannot reach"):
            Extractor(engine_for(server)).extract(Person, DOC)


@pytest.mark.parametrize(("replies", "error", "match"), [
    ([Reply(status=429, headers={"Retry-After": "0"})] * 3, EngineOverloaded, "429"),
    ([Reply(status=503)] * 3, EngineUnavailable, "503"),
    ([Reply(status=500)] * 3, EngineUnavailable, "500"),
    ([Reply(status=504)] * 3, EngineTimeout, "504"),
    ([Reply(raw=b"<html><body>502 Bad Gateway</body></html>")], EngineError, "no chat completion"),
    ([Reply(raw=b'{"id": "x", "choices": []}')], EngineError, "no chat completion"),
])
def test_persistent_faults_become_typed_errors(replies: list[Reply], error: type[Exception], match: str) -> None:
    script = list(replies)
    with fake_openai(lambda body: script.pop(0)) as server:
        with pytest.raises(error, match=match):
            Extractor(engine_for(server)).extract(Person, DOC)
        assert len(server.bodies) == len(replies)  # 1 + http_retries tries for what is retried, 1 otherwise


def test_429_and_503_are_retried_then_succeed() -> None:
    script = [Reply(status=429, headers={"Retry-After": "0"}), Reply(status=503), Reply(GOOD)]
    with fake_openai(lambda body: script.pop(0)) as server:
        assert Extractor(engine_for(server)).extract(Person, DOC).name == "Alice Smith"
        assert len(server.bodies) == 3


def test_slower_than_the_engine_timeout_is_engine_timeout() -> None:
    with fake_openai(lambda body: Reply(GOOD, delay=5.0)) as server:
        with pytest.raises(EngineTimeout, match="did not answer in time"):
            Extractor(engine_for(server, timeout=0.2, http_retries=1)).extract(Person, DOC)
        assert len(server.bodies) == 2


def test_invalid_json_and_truncated_output_are_retried_then_fail_typed() -> None:
    replies = [Reply("{garbage"), Reply('{"name":"Ali', finish="length"), Reply('{"name":"Alice Sm', finish="length")]
    with fake_openai(lambda body: replies.pop(0)) as server:
        with pytest.raises(ExtractionFailed) as info:
            Extractor(engine_for(server)).run(Person, DOC)
        budgets = [b["max_tokens"] for b in server.bodies]
    assert info.value.attempts == 3
    assert info.value.errors[0][0].startswith("not valid JSON")
    assert "cut off" in info.value.errors[1][0] and "cut off" in info.value.errors[2][0]
    assert budgets[2] == 2 * budgets[1]  # a cut output is retried once with twice the budget


# -- the service: readiness, Retry-After, deadlines -------------------------------------------------

def test_vllm_down_at_start_then_up_readiness_follows(tmp_path: Path) -> None:
    with fake_openai(start=False) as server:
        app = service(server, tmp_path, retry_after_s=2)

        async def scenario() -> None:
            async with serving(app) as c:
                await until(lambda: app.state.engines._engine is not None)
                r = await c.get("/readyz")
                assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
                assert r.headers["retry-after"] == "2" and "cannot reach" in r.json()["detail"]
                r = await c.post("/extract/person", json={"text": DOC})
                assert r.status_code == 503 and r.headers["retry-after"] == "2"
                assert r.json()["code"] == "engine-unavailable"
                assert (await c.get("/healthz")).status_code == 200  # the process is up all along
                server.start()
                assert (await c.get("/readyz")).status_code == 200
                r = await c.post("/extract/person", json={"text": DOC})
                assert r.status_code == 200 and r.json()["data"]["name"] == "Alice Smith"
                server.stop()
                assert (await c.get("/readyz")).status_code == 503  # and false again when it goes

        asyncio.run(scenario())


@pytest.mark.parametrize(("reply", "status", "code", "retry_after"), [
    (Reply(status=429, headers={"Retry-After": "7"}), 429, "engine-overloaded", "7"),
    (Reply(status=503), 503, "engine-unavailable", "1"),
    (Reply(raw=b"<html>oops</html>"), 503, "engine-error", "1"),
    (Reply("{garbage"), 422, "extraction-failed", None),
    (Reply('{"name":"Al', finish="length"), 422, "extraction-failed", None),
])
def test_the_service_maps_engine_faults_to_statuses_with_retry_after(tmp_path: Path, reply: Reply, status: int,
                                                                     code: str, retry_after: str | None) -> None:
    with fake_openai(lambda body: reply if "age" in body["response_format"]["json_schema"]["schema"]["properties"]
                     else default_reply(body)) as server:
        app = service(server, tmp_path, engine_options={"max_backoff_s": 0.01})

        async def scenario() -> httpx2.Response:
            async with serving(app) as c:
                await until(lambda: app.state.engines._engine is not None)
                return await c.post("/extract/person", json={"text": DOC})

        r = asyncio.run(scenario())
    assert r.status_code == status and r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == code
    assert r.headers.get("retry-after") == retry_after


def test_slower_than_the_deadline_is_504_and_the_next_request_is_served(tmp_path: Path) -> None:
    slow = [True]
    with fake_openai(lambda body: Reply(GOOD, delay=3.0 if slow[0] and "age" in body["response_format"][
            "json_schema"]["schema"]["properties"] else 0.0)) as server:
        app = service(server, tmp_path, deadline_s=0.3)

        async def scenario() -> list[httpx2.Response]:
            async with serving(app) as c:
                await until(lambda: app.state.engines._engine is not None)
                late = await c.post("/extract/person", json={"text": DOC})
                slow[0] = False
                return [late, await c.post("/extract/person", json={"text": DOC})]

        late, ok = asyncio.run(scenario())
    assert late.status_code == 504 and late.json()["code"] == "deadline-exceeded"
    assert ok.status_code == 200


# -- batch jobs: lose nothing, resume ------------------------------------------------------------------

def items(n: int, poison: int | None = None) -> list[dict[str, str]]:
    return [{"id": f"p{i}", "text": f"[doc p{i}] {'POISON ' if i == poison else ''}{DOC}"} for i in range(n)]


def test_vllm_going_down_mid_batch_loses_nothing_and_the_job_resumes(tmp_path: Path) -> None:
    with fake_openai() as server:
        server.down_after = 3
        app = service(server, tmp_path, batch_claim=2)

        async def scenario() -> None:
            async with serving(app) as c:
                await until(lambda: app.state.engines._engine is not None)
                job = (await c.post("/batches", json={"schema": "person", "items": items(8)})).json()
                await until(lambda: not server.running)  # down with requests in flight
                await asyncio.sleep(0.5)
                status = (await c.get(f"/batches/{job['id']}")).json()
                assert status["status"] != "done" and status["counts"]["failed"] == 0
                assert (await c.get("/readyz")).status_code == 503
                server.down_after = None
                server.start()

                async def finished() -> bool:
                    return bool((await c.get(f"/batches/{job['id']}")).json()["status"] == "done")

                await until(finished, timeout=60)
                status = (await c.get(f"/batches/{job['id']}")).json()
                lines = [json.loads(line) for line in (await c.get(f"/batches/{job['id']}/results")).text.splitlines()]
            assert status["counts"]["ok"] == 8 and status["counts"]["failed"] == 0
            assert [line["id"] for line in lines] == [f"p{i}" for i in range(8)]  # each once, in order
            assert all(line["data"]["name"] == "Alice Smith" for line in lines)

        asyncio.run(scenario())


def test_an_item_the_engine_keeps_failing_on_fails_alone_after_the_cap(tmp_path: Path) -> None:
    def reply(body: dict[str, Any]) -> Reply:
        return Reply(status=500) if "POISON" in body["messages"][-1]["content"] else default_reply(body)

    with fake_openai(reply) as server:
        app = service(server, tmp_path, batch_max_engine_errors=3, engine_options={"http_retries": 0})

        async def scenario() -> None:
            async with serving(app) as c:
                await until(lambda: app.state.engines._engine is not None)
                job = (await c.post("/batches", json={"schema": "person", "items": items(5, poison=2)})).json()

                async def finished() -> bool:
                    return bool((await c.get(f"/batches/{job['id']}")).json()["status"] == "done")

                await until(finished, timeout=60)
                status = (await c.get(f"/batches/{job['id']}")).json()
                lines = [json.loads(line) for line in (await c.get(f"/batches/{job['id']}/results")).text.splitlines()]
            assert status["counts"] == {"total": 5, "pending": 0, "running": 0, "ok": 4, "failed": 1, "cancelled": 0}
            poisoned = lines[2]
            assert poisoned["id"] == "p2" and poisoned["error"]["type"] == "engine-unavailable"
            assert "failed on this item 3 times" in poisoned["error"]["message"]
            assert all("data" in line for i, line in enumerate(lines) if i != 2)

        asyncio.run(scenario())
        tries = [b for b in person_bodies(server) if "POISON" in b["messages"][-1]["content"]]
        assert len(tries) == 3  # the cap, not forever


def test_an_outage_counts_against_no_item(tmp_path: Path) -> None:
    with fake_openai(start=False) as server:
        app = service(server, tmp_path, batch_max_engine_errors=1, engine_options={"http_retries": 0})

        async def scenario() -> None:
            async with serving(app) as c:
                await until(lambda: app.state.engines._engine is not None)
                job = (await c.post("/batches", json={"schema": "person", "items": items(3)})).json()
                await asyncio.sleep(1.0)  # several rounds against a server that is not there
                status = (await c.get(f"/batches/{job['id']}")).json()
                assert status["counts"]["failed"] == 0 and status["counts"]["ok"] == 0
                server.start()

                async def finished() -> bool:
                    return bool((await c.get(f"/batches/{job['id']}")).json()["status"] == "done")

                await until(finished, timeout=60)
                assert (await c.get(f"/batches/{job['id']}")).json()["counts"]["ok"] == 3

        asyncio.run(scenario())


def test_the_store_counts_engine_failures_and_fails_the_item_at_the_cap(tmp_path: Path) -> None:
    store = BatchStore(database_url(str(tmp_path / "b.sqlite3")))
    job, _ = store.create_job(schema="person", options={}, digest="d", items=[NewItem("a", DOC), NewItem("b", DOC)])
    line = '{"id":"a","error":{"type":"engine-unavailable","message":"gave up"}}'
    for expected in (False, False, True):
        claimed = {c.item_id: c for c in store.claim("w", 10, 60.0)}
        assert "a" in claimed
        assert store.engine_failure("w", job.id, claimed["a"].seq, max_errors=3, line=line) is expected
        store.release("w")
    assert store.engine_failure("someone-else", job.id, 0, max_errors=3, line=line) is False  # no lease, no count
    counts = store.get_job(job.id).counts
    assert (counts["failed"], counts["pending"]) == (1, 1)
    assert store.results(job.id) == [(0, line)]
    store.dispose()


def test_extract_batch_stops_on_an_outage_keeps_its_results_and_resumes(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(item) + "\n" for item in items(12)))
    cmd = ["batch", "person", str(src), "-o", str(out), "--no-progress", "--concurrency", "2", "--engine", "vllm-http",
           "--engine-option", "backoff_s=0.01", "--engine-option", "http_retries=1"]
    with fake_openai() as server:
        server.down_after = 5
        assert main([*cmd, "--engine-option", f"base_url={server.url}"]) == 3
        err = capsys.readouterr().err
        assert "rerun to resume" in err and "Traceback" not in err
        first = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        assert 0 < len(first) < 12
        server.down_after = None
        server.start()
        assert main([*cmd, "--engine-option", f"base_url={server.url}"]) == 0
        assert f"{len(first)} already done" in capsys.readouterr().err
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"p{i}" for i in range(12))  # nothing lost, nothing twice


def test_an_engine_too_busy_for_its_probe_is_not_down_so_the_item_fails_at_the_cap(tmp_path: Path) -> None:
    """Issue 17, item 1: the item that keeps the engine busy times out, the readiness probe behind
    it times out too; that is a busy engine, not a down one: the item's failures count and it ends
    failed at the cap instead of coming back forever."""
    def reply(body: dict[str, Any]) -> Reply:
        content = body["messages"][-1]["content"]
        if "POISON" in content:
            return Reply(status=504)
        if '{"ok": true}' in content:  # the readiness probe: slower than its timeout
            return Reply(content='{"ok":true}', delay=2.0)
        return default_reply(body)

    with fake_openai(reply) as server:
        app = service(server, tmp_path, batch_max_engine_errors=2, ready_timeout_s=0.2,
                      engine_options={"http_retries": 0})

        async def scenario() -> None:
            async with serving(app) as c:
                await until(lambda: app.state.engines._engine is not None)
                job = (await c.post("/batches", json={"schema": "person", "items": items(3, poison=1)})).json()

                async def finished() -> bool:
                    return bool((await c.get(f"/batches/{job['id']}")).json()["status"] == "done")

                await until(finished, timeout=60)
                status = (await c.get(f"/batches/{job['id']}")).json()
            assert status["counts"]["ok"] == 2 and status["counts"]["failed"] == 1

        asyncio.run(scenario())
