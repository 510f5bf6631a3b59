"""The HTTP service, in process (httpx2's ASGI transport) on a scripted engine: every status it answers."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx2
import pytest

from extractor import (
    DocumentTooLarge,
    EngineUnavailable,
    GenerationResult,
    ScriptedEngine,
    error_class,
    http_status,
)
from extractor import errors as e
from service.auth import hash_key
from tests.service_support import DOC, GOOD, GatedEngine, answer, call, client, make_app, text_pdf

PROBLEM = "application/problem+json"


def problem(response: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:extractor:problem:{code}"
    assert (body["status"], body["code"]) == (status, code)
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["detail"]
    return body


# -- 200 ----------------------------------------------------------------------------------------

def test_json_body_gives_the_extraction_with_meta_and_timing() -> None:
    engine = ScriptedEngine(answer)
    r = call(make_app(engine), "POST", "/extract/person", json={"text": DOC}, headers={"X-Request-ID": "req-42"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["schema"] == "person" and body["version"] == "3"
    assert body["data"] == {"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None}
    meta = body["meta"]
    assert (meta["attempts"], meta["engine"], meta["model"], meta["errors"]) == (1, "fake", "scripted", [])
    assert meta["tokens"]["completion"] == 2 and meta["tokens"]["prompt"] > 0
    assert meta["latency_ms"] >= meta["engine_ms"] >= 0 and meta["queue_ms"] >= 0
    assert r.headers["x-request-id"] == "req-42"
    timing = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
    assert set(timing) == {"queue", "engine", "extract"}
    assert f"\n{DOC}\n" in engine.requests[0].messages[-1]["content"]


@pytest.mark.parametrize(("content_type", "raw"), [
    ("text/plain", DOC.encode()),
    ("text/plain; charset=utf-8", b"\xef\xbb\xbf" + DOC.encode()),  # a BOM is dropped
    ("text/plain; charset=latin-1", DOC.replace("Alice", "Alíce").encode("latin-1")),
    ("text/markdown", f"# Person\n\n{DOC}".encode()),
    ("application/pdf", text_pdf("Alice Smith is 34 years old", "and lives in Lisbon.")),
])
def test_raw_bodies_are_read_by_content_type(content_type: str, raw: bytes) -> None:
    engine = ScriptedEngine(answer)
    r = call(make_app(engine), "POST", "/extract/person", content=raw, headers={"content-type": content_type})
    assert r.status_code == 200, r.text
    sent = engine.requests[0].messages[-1]["content"]
    assert "Smith is 34 years old" in sent and "Lisbon" in sent and "\ufeff" not in sent
    if "latin-1" in content_type:
        assert "Alíce" in sent


@pytest.mark.parametrize(("name", "mime", "raw"), [
    ("alice.txt", "text/plain", DOC.encode()),
    ("alice.md", "text/markdown", f"**{DOC}**".encode()),
    ("alice.md", "application/octet-stream", DOC.encode()),  # by extension
    ("alice.pdf", "application/pdf", text_pdf(DOC)),
])
def test_multipart_uploads(name: str, mime: str, raw: bytes) -> None:
    engine = ScriptedEngine(answer)
    r = call(make_app(engine), "POST", "/extract/person", files={"file": (name, raw, mime)},
             data={"options": json.dumps({"max_retries": 0})})
    assert r.status_code == 200, r.text
    assert DOC in engine.requests[0].messages[-1]["content"]


def test_options_reach_the_retry_policy() -> None:
    engine = ScriptedEngine(["{}", "{}", GOOD])
    r = call(make_app(engine), "POST", "/extract/person", json={"text": DOC, "options": {"max_retries": 0}})
    body = problem(r, 422, "extraction-failed")
    assert body["attempts"] == 1 and len(engine.requests) == 1


def test_a_retry_shows_its_errors_in_meta() -> None:
    r = call(make_app(ScriptedEngine(['{"name":34,"age":34,"city":"Lisbon","email":null}', GOOD])),
             "POST", "/extract/person", json={"text": DOC})
    assert r.status_code == 200
    assert r.json()["meta"]["attempts"] == 2
    assert r.json()["meta"]["errors"] == [["$.name: 34 is not of type 'string'"]]


# -- 400 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "content_type", "code"), [
    (b'{"text": "Alice', "application/json", "malformed-request"),
    (b"\xff\xfe{}", "application/json", "malformed-request"),
    (b"[" * 100_000, "application/json", "malformed-request"),  # nesting past the recursion limit
    (b"Alice \xff\xfe is 34", "text/plain", "undecodable-document"),
    (b"%PDF-1.7 this is not really a pdf", "application/pdf", "undecodable-document"),
    (b'{"text": "\\ud800 lone surrogate"}', "application/json", "undecodable-document"),
    (b"--x\r\nbroken", "multipart/form-data", "malformed-request"),  # no boundary
])
def test_unreadable_bodies_are_400(raw: bytes, content_type: str, code: str) -> None:
    engine = ScriptedEngine(answer)
    r = call(make_app(engine), "POST", "/extract/person", content=raw, headers={"content-type": content_type})
    problem(r, 400, code)
    assert engine.requests == []


# -- 401 ----------------------------------------------------------------------------------------

def test_api_keys_are_checked_against_their_sha256() -> None:
    app = make_app(api_keys=(hash_key("s3cret"),))
    problem(call(app, "POST", "/extract/person", json={"text": DOC}), 401, "unauthorized")
    problem(call(app, "POST", "/extract/person", json={"text": DOC}, headers={"X-API-Key": "wrong"}), 401,
            "unauthorized")
    problem(call(app, "GET", "/schemas", headers={"Authorization": "Basic s3cret"}), 401, "unauthorized")
    assert call(app, "POST", "/extract/person", json={"text": DOC}, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert call(app, "GET", "/schemas", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert call(app, "GET", "/healthz").status_code == 200  # probes stay open
    # with keys on, the API's description is behind a key too (only health and metrics are open)
    for page in ("/openapi.json", "/docs", "/redoc"):
        problem(call(app, "GET", page), 401, "unauthorized")
    described = call(app, "GET", "/openapi.json", headers={"X-API-Key": "s3cret"}).json()
    assert "securitySchemes" in described["components"]


def test_api_keys_file(tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# ops team\n{hash_key('k1')}\nsha256:{hash_key('k2')}\n")
    app = make_app(api_keys_file=str(keys))
    for key, status in (("k1", 200), ("k2", 200), ("k3", 401)):
        assert call(app, "GET", "/schemas", headers={"X-API-Key": key}).status_code == status


# -- 404 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/extract/nope", "/extract/person.json", "/extract/%2E%2E%2Fpyproject.toml"])
def test_unknown_schema_is_404_and_never_a_file(path: str) -> None:
    r = call(make_app(), "POST", path, json={"text": DOC})
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM


def test_unknown_schema_problem() -> None:
    body = problem(call(make_app(), "POST", "/extract/nope", json={"text": DOC}), 404, "unknown-schema")
    assert "person" in body["detail"] and body["instance"] == "/extract/nope"
    problem(call(make_app(), "GET", "/schemas/nope"), 404, "unknown-schema")


# -- 413 ----------------------------------------------------------------------------------------

def test_body_over_the_limit_is_413_before_the_engine() -> None:
    engine = ScriptedEngine(answer)
    app = make_app(engine, max_body_bytes=1000)
    problem(call(app, "POST", "/extract/person", content=b"x" * 1001, headers={"content-type": "text/plain"}), 413,
            "document-too-large")

    async def chunked() -> Any:  # no Content-Length: counted as it streams
        for _ in range(20):
            yield b"y" * 100

    problem(call(app, "POST", "/extract/person", content=chunked(), headers={"content-type": "text/plain"}), 413,
            "document-too-large")
    assert engine.requests == []


def test_document_over_the_character_limit_is_413() -> None:
    r = call(make_app(max_document_chars=10), "POST", "/extract/person", json={"text": DOC})
    problem(r, 413, "document-too-large")


def test_document_over_the_token_budget_is_413() -> None:
    # the local engine raises DocumentTooLarge when prompt + output budget exceed its context
    engine = ScriptedEngine([DocumentTooLarge("prompt of 3000 tokens plus an output budget of 100 exceeds 2048")])
    body = problem(call(make_app(engine), "POST", "/extract/person", json={"text": DOC}), 413, "document-too-large")
    assert "2048" in body["detail"]


# -- 415 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs"), [
    {"content": b"<doc/>", "headers": {"content-type": "application/xml"}},
    {"content": b"text=hi", "headers": {"content-type": "application/x-www-form-urlencoded"}},
    {"content": b"hi"},  # no content type at all
    {"content": DOC.encode(), "headers": {"content-type": "text/plain; charset=klingon"}},
    {"files": {"file": ("photo.png", b"\x89PNG....", "image/png")}},
])
def test_unsupported_media_is_415(kwargs: dict[str, Any]) -> None:
    engine = ScriptedEngine(answer)
    problem(call(make_app(engine), "POST", "/extract/person", **kwargs), 415, "unsupported-media-type")
    assert engine.requests == []


# -- 422 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "where"), [
    ({"txt": DOC}, "$.text"),
    ({"text": 42}, "$.text"),
    ({"text": DOC, "options": {"max_retries": 99}}, "$.options.max_retries"),
    ({"text": DOC, "options": {"temperature": 2}}, "$.options.temperature"),
    ([DOC], "$"),
])
def test_invalid_body_is_422_with_the_paths(body: Any, where: str) -> None:
    got = problem(call(make_app(), "POST", "/extract/person", json=body), 422, "invalid-request")
    assert any(err.startswith(where) for err in got["errors"]), got["errors"]


def test_invalid_multipart_options_and_missing_file_are_422() -> None:
    app = make_app()
    problem(call(app, "POST", "/extract/person", files={"file": ("a.txt", DOC.encode(), "text/plain")},
                 data={"options": '{"timeout_s": -1}'}), 422, "invalid-request")
    problem(call(app, "POST", "/extract/person", files={"other": ("a.txt", DOC.encode(), "text/plain")}), 422,
            "invalid-request")


@pytest.mark.parametrize("kwargs", [
    {"json": {"text": "  \n\t "}},
    {"content": b"", "headers": {"content-type": "text/plain"}},
    {"content": text_pdf(), "headers": {"content-type": "application/pdf"}},  # a PDF with no text layer
])
def test_empty_document_is_422_and_never_reaches_the_engine(kwargs: dict[str, Any]) -> None:
    engine = ScriptedEngine(answer)
    problem(call(make_app(engine), "POST", "/extract/person", **kwargs), 422, "empty-document")
    assert engine.requests == []


def test_failed_validation_after_all_retries_is_422_with_every_error() -> None:
    engine = ScriptedEngine(["{not json", "[]", '{"name":1}'])
    body = problem(call(make_app(engine), "POST", "/extract/person", json={"text": DOC}), 422, "extraction-failed")
    assert body["attempts"] == 3 and len(body["errors"]) == 3
    assert body["errors"][1] == ["$: [] is not of type 'object'"]


# -- 429 / 503 / 504 ----------------------------------------------------------------------------

async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition never held")


def test_queue_full_is_429_with_retry_after_and_the_queued_ones_finish() -> None:
    engine = GatedEngine()
    app = make_app(engine, max_inflight=1, max_waiting=1, retry_after_s=3)
    queue = app.state.queue

    async def scenario() -> list[httpx2.Response]:
        async with client(app) as c:
            first = asyncio.create_task(c.post("/extract/person", json={"text": DOC}))
            await _until(lambda: engine.entered == 1)
            second = asyncio.create_task(c.post("/extract/person", json={"text": DOC}))
            await _until(lambda: queue.waiting == 1)
            third = await c.post("/extract/person", json={"text": DOC})
            engine.gate.set()
            return [third, await first, await second]

    third, first, second = asyncio.run(scenario())
    problem(third, 429, "queue-full")
    assert third.headers["retry-after"] == "3"
    assert first.status_code == second.status_code == 200
    assert second.json()["meta"]["queue_ms"] > 0
    assert (queue.inflight, queue.waiting) == (0, 0)


def test_batching_sends_concurrent_requests_to_the_engine_together() -> None:
    engine = GatedEngine()
    app = make_app(engine, max_inflight=8)

    async def scenario() -> list[httpx2.Response]:
        async with client(app) as c:
            tasks = [asyncio.create_task(c.post("/extract/person", json={"text": DOC})) for _ in range(8)]
            await _until(lambda: engine.entered == 8)  # all eight are in the engine at once
            engine.gate.set()
            return list(await asyncio.gather(*tasks))

    assert [r.status_code for r in asyncio.run(scenario())] == [200] * 8


@pytest.mark.parametrize("error", [EngineUnavailable("vLLM at 127.0.0.1:8000 refused the connection"),
                                   e.EngineError("scripted engine has no outputs left")])
def test_engine_down_is_503_with_retry_after(error: Exception) -> None:
    r = call(make_app(ScriptedEngine([error])), "POST", "/extract/person", json={"text": DOC})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert r.json()["type"].startswith("urn:extractor:problem:engine-")


def test_engine_still_loading_is_503_and_not_ready() -> None:
    from service import Settings, create_app

    app = create_app(Settings(engine="local"))  # lifespan not run: the engine never started loading
    problem(call(app, "POST", "/extract/person", json={"text": DOC}), 503, "engine-unavailable")
    r = call(app, "GET", "/readyz")
    problem(r, 503, "engine-unavailable")
    assert "starting" in r.json()["detail"] and r.headers["retry-after"]
    assert call(app, "GET", "/healthz").json() == {"status": "ok"}


def test_engine_failing_to_load_is_503() -> None:
    from service import Settings, create_app

    app = create_app(Settings(engine="local", engine_options={"no_such_option": 1}))

    async def scenario() -> httpx2.Response:
        async with app.router.lifespan_context(app):
            await _until(lambda: app.state.engines._loading.done())
            async with client(app) as c:
                return await c.get("/readyz")

    r = asyncio.run(scenario())
    problem(r, 503, "engine-unavailable")
    assert "failed to start" in r.json()["detail"]


def test_deadline_is_504_and_frees_the_slot() -> None:
    engine = GatedEngine()
    app = make_app(engine, deadline_s=0.2, max_inflight=1)
    body = problem(call(app, "POST", "/extract/person", json={"text": DOC}), 504, "deadline-exceeded")
    assert "after 1 engine call" in body["detail"]
    assert app.state.queue.inflight == 0


def test_deadline_while_queued_is_504() -> None:
    engine = GatedEngine()
    app = make_app(engine, max_inflight=1, max_waiting=4)

    async def scenario() -> list[httpx2.Response]:
        async with client(app) as c:
            first = asyncio.create_task(c.post("/extract/person", json={"text": DOC}))
            await _until(lambda: engine.entered == 1)
            late = await c.post("/extract/person", json={"text": DOC, "options": {"timeout_s": 0.05}})
            assert app.state.queue.waiting == 0  # gave its place up
            engine.gate.set()
            return [late, await first]

    late, first = asyncio.run(scenario())
    assert "in the queue" in problem(late, 504, "deadline-exceeded")["detail"]
    assert first.status_code == 200


def test_queue_refuses_at_once_what_it_could_not_serve_within_the_deadline() -> None:
    """Once slots are known to be held about 0.3 s, a request that would queue behind a running one
    with a 0.2 s deadline gets a 429 with Retry-After now, not a 504 later; one with time to spare
    still queues and is served."""
    engine = GatedEngine()
    app = make_app(engine, max_inflight=1, max_waiting=4)
    queue = app.state.queue

    async def scenario() -> list[httpx2.Response]:
        async with client(app) as c:
            warm = asyncio.create_task(c.post("/extract/person", json={"text": DOC}))
            await _until(lambda: engine.entered == 1)
            await asyncio.sleep(0.3)
            engine.gate.set()
            await warm
            engine.gate.clear()
            running = asyncio.create_task(c.post("/extract/person", json={"text": DOC}))
            await _until(lambda: engine.entered == 2)
            hopeless = await c.post("/extract/person", json={"text": DOC, "options": {"timeout_s": 0.2}})
            patient = asyncio.create_task(c.post("/extract/person", json={"text": DOC, "options": {"timeout_s": 30}}))
            await _until(lambda: queue.waiting == 1)
            engine.gate.set()
            return [hopeless, await running, await patient]

    hopeless, running, patient = asyncio.run(scenario())
    assert queue.hold_s is not None
    body = problem(hopeless, 429, "queue-full")
    assert "deadline" in body["detail"] and int(hopeless.headers["retry-after"]) >= 1
    assert running.status_code == patient.status_code == 200


# -- ops ------------------------------------------------------------------------------------------

def test_readyz_runs_a_real_generation_and_caches_it() -> None:
    engine = ScriptedEngine(answer)
    app = make_app(engine)
    first, second = call(app, "GET", "/readyz"), call(app, "GET", "/readyz")
    assert first.status_code == 200 and first.json()["cached"] is False
    assert second.json()["cached"] is True
    assert len(engine.requests) == 1 and engine.requests[0].schema["required"] == ["ok"]


def test_readyz_is_503_when_the_engine_fails_its_probe() -> None:
    r = call(make_app(ScriptedEngine([EngineUnavailable("connection refused")])), "GET", "/readyz")
    problem(r, 503, "engine-unavailable")
    r = call(make_app(ScriptedEngine([GenerationResult("", "stop", 1, 0)])), "GET", "/readyz")
    problem(r, 503, "engine-unavailable")


def test_metrics_count_requests_attempts_failures_tokens_and_queue() -> None:
    engine = ScriptedEngine(['{"name":"Alice Smith","age":"x","city":"Lisbon","email":null}', GOOD,
                             "{", "{", "{"])
    app = make_app(engine)
    call(app, "POST", "/extract/person", json={"text": DOC})
    call(app, "POST", "/extract/person", json={"text": DOC})
    call(app, "POST", "/extract/nope", json={"text": DOC})
    text = call(app, "GET", "/metrics").text
    assert 'extractor_http_requests_total{method="POST",route="/extract/person",status="200"} 1.0' in text
    assert 'extractor_http_requests_total{method="POST",route="/extract/person",status="422"} 1.0' in text
    assert 'extractor_http_requests_total{method="POST",route="/extract/{schema}",status="404"} 1.0' in text
    assert 'extractor_http_request_duration_seconds_count{route="/extract/person"} 2.0' in text
    assert 'extractor_extraction_attempts_sum{outcome="ok",schema="person"} 2.0' in text
    assert 'extractor_extraction_attempts_sum{outcome="failed",schema="person"} 3.0' in text
    assert 'extractor_validation_failures_total{schema="person"} 4.0' in text
    assert 'extractor_tokens_total{kind="completion",schema="person"}' in text
    assert "extractor_queue_inflight 0.0" in text and "extractor_queue_waiting 0.0" in text
    assert 'extractor_engine_duration_seconds_count{schema="person"} 2.0' in text


def test_one_json_log_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    from service.access_log import JsonLines

    app = make_app()
    with caplog.at_level(logging.INFO, logger="extractor.access"):
        call(app, "POST", "/extract/person", json={"text": DOC}, headers={"X-Request-ID": "r-1"})
        call(app, "POST", "/extract/person", json={"text": ""}, headers={"X-Request-ID": "bad id with spaces"})
    records = [r for r in caplog.records if r.name == "extractor.access"]
    assert len(records) == 2
    ok, bad = (json.loads(JsonLines().format(r)) for r in records)
    assert ok["request_id"] == "r-1" and ok["status"] == 200 and ok["route"] == "/extract/person"
    assert ok["schema"] == "person" and ok["attempts"] == 1 and "engine_ms" in ok and ok["duration_ms"] >= 0
    assert bad["status"] == 422 and bad["error"] == "empty-document" and len(bad["request_id"]) == 32


def test_schemas_list_and_show() -> None:
    app = make_app()
    listed = call(app, "GET", "/schemas").json()
    assert [s["name"] for s in listed] == ["invoice", "job_posting", "person", "receipt"]
    assert listed[2]["path"] == "/extract/person"
    shown = call(app, "GET", "/schemas/person").json()
    assert shown["additionalProperties"] is False and set(shown["required"]) == {"name", "age", "city", "email"}


def test_openapi_has_a_typed_path_per_schema() -> None:
    doc = call(make_app(), "GET", "/openapi.json").json()
    for name, model in (("person", "Person"), ("invoice", "Invoice")):
        op = doc["paths"][f"/extract/{name}"]["post"]
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        extraction = doc["components"]["schemas"][ok.rsplit("/", 1)[1]]
        assert extraction["properties"]["data"]["$ref"] == f"#/components/schemas/{model}"
        assert extraction["properties"]["schema"]["const"] == name
        assert set(op["requestBody"]["content"]) >= {"application/json", "text/plain", "multipart/form-data"}
        assert op["responses"]["429"]["content"]["application/problem+json"]
    assert {"type": "integer", "minimum": 0, "maximum": 150}.items() <= (
        doc["components"]["schemas"]["Person"]["properties"]["age"]["anyOf"][0].items())
    assert "ExtractRequest" in doc["components"]["schemas"]


def test_unknown_route_and_method_are_problems_too() -> None:
    assert call(make_app(), "GET", "/nowhere").headers["content-type"] == PROBLEM
    r = call(make_app(), "GET", "/extract/person")
    assert r.status_code == 405 and r.json()["type"] == "about:blank"


def test_new_error_classes_map_to_their_statuses_and_back_from_their_codes() -> None:
    for exc, status in ((e.QueueFull("x"), 429), (e.DeadlineExceeded("x"), 504), (e.MalformedRequest("x"), 400),
                        (e.InvalidRequest("x"), 422), (e.UnsupportedMediaType("x"), 415), (e.Unauthorized("x"), 401)):
        assert http_status(exc) == status
        assert error_class(exc.code) is type(exc)
    assert issubclass(e.QueueFull, e.EngineOverloaded) and issubclass(e.DeadlineExceeded, e.EngineTimeout)
    assert error_class("no-such-code") is e.ExtractorError


def test_settings_come_from_the_environment_and_flags_override_them() -> None:
    from extractor.engines import parse_option as parse_engine_option
    from service.settings import Settings

    env = {"EXTRACTOR_ENGINE": "vllm-http", "EXTRACTOR_MAX_INFLIGHT": "4", "EXTRACTOR_DEADLINE_S": "2.5",
           "EXTRACTOR_ENGINE_OPTIONS": '{"base_url": "http://127.0.0.1:8000/v1"}', "EXTRACTOR_API_KEYS": "a, b",
           "EXTRACTOR_PORT": ""}
    s = Settings.from_env(env)
    assert (s.engine, s.max_inflight, s.deadline_s, s.port, s.api_keys) == ("vllm-http", 4, 2.5, 8080, ("a", "b"))
    assert s.engine_options == {"base_url": "http://127.0.0.1:8000/v1"}
    assert s.merged(max_inflight=16, engine=None).max_inflight == 16 and s.merged(engine=None).engine == "vllm-http"
    assert parse_engine_option("concurrency=8") == ("concurrency", 8)
    assert parse_engine_option("base_url=http://x/v1") == ("base_url", "http://x/v1")
    for bad in ({"EXTRACTOR_MAX_INFLIGHT": "0"}, {"EXTRACTOR_PORT": "x"}, {"EXTRACTOR_ENGINE_OPTIONS": "[1]"}):
        with pytest.raises(ValueError):
            Settings.from_env(bad)
