"""The service's grounding options and its HTML view, in process on a scripted engine."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI

from extractor import AsyncClient, GenerationRequest, ScriptedEngine
from extractor.contracts.contract import task_from_model
from extractor.grounding.spans import Span
from schemas import Person
from service.auth import hash_key
from tests.service_support import DOC, GOOD, answer, call, client, make_app

FORM = "application/x-www-form-urlencoded"
INVENTED = '{"name":"Maria Garcia","age":34,"city":"Lisbon","email":null}'
HOSTILE = DOC + " <script>document.body.setAttribute('data-pwned','1')</script><img src=x onerror=alert(1)>"
MARK = re.compile(r'<mark class="c\d+[^"]*" data-field="([^"]+)" data-match="([^"]+)"[^>]*>([^<]*)</mark>')


def marks(page: str) -> dict[str, str]:
    return {field: html.unescape(text) for field, _, text in MARK.findall(page)}


# -- options of /extract ---------------------------------------------------------------------------

def test_spans_and_confidence_only_when_asked() -> None:
    app = make_app()
    plain = call(app, "POST", "/extract/person", json={"text": DOC}).json()
    assert "spans" not in plain["meta"] and "confidence" not in plain["meta"]
    body = call(app, "POST", "/extract/person", json={"text": DOC, "options": {"spans": True}}).json()
    assert body["meta"]["spans"]["name"] == [{"start": 0, "end": 11, "match": "exact"}]
    assert "confidence" not in body["meta"]  # the scripted engine returns no logprobs


def test_options_are_checked() -> None:
    r = call(make_app(), "POST", "/extract/person", json={"text": DOC, "options": {"spans": "sometimes"}})
    assert r.status_code == 422 and "$.options.spans" in r.text


def test_require_grounded_retries_through_the_service() -> None:
    engine = ScriptedEngine([INVENTED, GOOD, GOOD])
    app = make_app(engine)
    body = call(app, "POST", "/extract/person", json={"text": DOC, "options": {"require_grounded": True}}).json()
    assert body["meta"]["attempts"] == 2 and "does not occur in the document" in body["meta"]["errors"][0][0]


def recording_app() -> tuple[FastAPI, list[GenerationRequest]]:
    """An app on a scripted engine that keeps every request it gets."""
    seen: list[GenerationRequest] = []

    def script(request: GenerationRequest) -> str:
        seen.append(request)
        return answer(request)

    return make_app(ScriptedEngine(script)), seen


def test_confidence_option_asks_the_engine_for_logprobs() -> None:
    app, seen = recording_app()
    call(app, "POST", "/extract/person", json={"text": DOC, "options": {"confidence": True}})
    call(app, "POST", "/extract/person", json={"text": DOC})
    assert [r.logprobs for r in seen if "age" in r.schema.get("properties", {})] == [True, False]


def test_grounded_decoding_sends_the_document_schema_through_the_service_and_the_sdk() -> None:
    app, seen = recording_app()
    call(app, "POST", "/extract/person", json={"text": DOC, "options": {"grounded_decoding": True}})

    async def go() -> None:
        async with AsyncClient("http://svc", transport=httpx2.ASGITransport(app=app)) as c:
            await c.run(Person, DOC, grounded_decoding=True)
            await c.run(Person, DOC, grounded_decoding=False)

    asyncio.run(go())
    person = [r for r in seen if "age" in r.schema.get("properties", {})]
    strict = task_from_model(Person).strict_schema
    assert [r.schema != strict for r in person] == [True, True, False]  # the document's own schema twice
    assert person[0].schema["properties"]["city"]["anyOf"][0] == {"type": "string", "enum": ["Lisbon"]}


def test_the_sdk_client_passes_the_options_and_reads_spans_back() -> None:
    app = make_app()

    async def go() -> Any:
        async with AsyncClient("http://svc", transport=httpx2.ASGITransport(app=app)) as c:
            return await c.run(Person, DOC, spans=True), await c.run(Person, DOC)

    with_spans, without = asyncio.run(go())
    assert with_spans.meta.spans["city"] == [Span(41, 47, "exact")]
    assert without.meta.spans is None and without.meta.confidence is None


# -- /view -------------------------------------------------------------------------------------------

def assert_safe_html(r: httpx2.Response) -> str:
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["content-security-policy"]
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.headers["x-content-type-options"] == "nosniff"
    return r.text


def test_get_view_is_a_form_of_the_registered_schemas() -> None:
    r = call(make_app(), "GET", "/view")
    assert r.status_code == 200
    page = assert_safe_html(r)
    assert '<form method="post" action="/view"' in page
    assert all(f'<option value="{name}"' in page for name in ("invoice", "person", "receipt"))
    assert 'name="api_key"' not in page  # keys are off


def test_posted_form_shows_the_document_highlighted() -> None:
    r = call(make_app(), "POST", "/view", data={"schema": "person", "text": DOC})
    assert r.status_code == 200, r.text
    page = assert_safe_html(r)
    assert marks(page) == {"name": "Alice Smith", "age": "34", "city": "Lisbon"}
    assert '<option value="person" selected>' in page


def test_document_markup_is_escaped_never_rendered() -> None:
    r = call(make_app(), "POST", "/view", data={"schema": "person", "text": HOSTILE})
    page = assert_safe_html(r)
    assert "<script>document" not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.body.setAttribute(&#x27;data-pwned&#x27;,&#x27;1&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page.lower()


@pytest.mark.parametrize(("kwargs", "status", "says"), [
    ({"data": {"schema": "nope", "text": DOC}}, 404, "unknown-schema"),
    ({"data": {"schema": "person", "text": "   "}}, 422, "empty-document"),
    ({"data": {"text": DOC}}, 422, "pick a schema"),
    ({"json": {"schema": "person", "text": DOC}}, 415, "unsupported-media-type"),
    ({"content": b"schema=person&text=%ff%fe", "headers": {"content-type": FORM}}, 400, "undecodable-document"),
])
def test_form_errors_come_back_as_the_page_with_the_reason(kwargs: dict[str, Any], status: int, says: str) -> None:
    r = call(make_app(), "POST", "/view", **kwargs)
    assert r.status_code == status
    page = assert_safe_html(r)
    assert says in page and '<form method="post"' in page


def test_with_api_keys_the_form_takes_a_key_field() -> None:
    app = make_app(api_keys=(hash_key("sesame"),))
    assert 'name="api_key"' in call(app, "GET", "/view").text
    refused = call(app, "POST", "/view", data={"schema": "person", "text": DOC})
    assert refused.status_code == 401 and "unauthorized" in refused.text
    wrong = call(app, "POST", "/view", data={"schema": "person", "text": DOC, "api_key": "guess"})
    assert wrong.status_code == 401
    ok = call(app, "POST", "/view", data={"schema": "person", "text": DOC, "api_key": "sesame"})
    assert ok.status_code == 200 and marks(ok.text)["name"] == "Alice Smith"
    by_header = call(app, "POST", "/view", data={"schema": "person", "text": DOC}, headers={"X-API-Key": "sesame"})
    assert by_header.status_code == 200
    assert call(app, "GET", "/view/batches/b123").status_code == 401


# -- /view/batches/{id} -------------------------------------------------------------------------------

@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    async with app.router.lifespan_context(app), client(app) as c:
        yield c


async def finished_batch(c: httpx2.AsyncClient, items: list[dict[str, Any]], options: dict[str, Any]) -> str:
    r = await c.post("/batches", json={"schema": "person", "items": items, "options": options})
    assert r.status_code == 201, r.text
    job_id: str = r.json()["id"]
    deadline = time.monotonic() + 15
    while (await c.get(f"/batches/{job_id}")).json()["status"] != "done":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    return job_id


def test_batch_view_highlights_every_finished_item(tmp_path: Any) -> None:
    app = make_app(batch_db=str(tmp_path / "b.sqlite3"), batch_poll_s=0.02)
    items = [{"id": "first", "text": DOC}, {"id": "hostile", "text": HOSTILE}, {"id": "empty", "text": " "}]

    async def go() -> tuple[httpx2.Response, httpx2.Response, httpx2.Response]:
        async with serving(app) as c:
            job_id = await finished_batch(c, items, {"spans": True})
            results = (await c.get(f"/batches/{job_id}/results")).text
            assert '"spans"' in results  # the option reached the worker
            return (await c.get(f"/view/batches/{job_id}"), await c.get(f"/view/batches/{job_id}?limit=1"),
                    await c.get("/view/batches/b000nope"))

    page, first_only, missing = asyncio.run(go())
    assert page.status_code == 200
    text = assert_safe_html(page)
    sections = text.split('<section class="item"')[1:]
    assert [re.search(r'data-id="([^"]+)"', s).group(1) for s in sections] == ["first", "hostile", "empty"]  # type: ignore[union-attr]
    assert marks(sections[0]) == marks(sections[1]) == {"name": "Alice Smith", "age": "34", "city": "Lisbon"}
    assert re.search(r'<p class="error">[^<]*empty[^<]*</p>', sections[2]), sections[2]
    assert "<script" not in text.lower()
    assert "2 ok, 1 failed of 3" in text
    assert first_only.text.count('<section class="item"') == 1 and "the first 1 finished shown" in first_only.text
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


def test_batch_view_computes_spans_when_the_batch_ran_without_them(tmp_path: Any) -> None:
    app = make_app(batch_db=str(tmp_path / "b.sqlite3"), batch_poll_s=0.02)

    async def go() -> str:
        async with serving(app) as c:
            job_id = await finished_batch(c, [{"id": "a", "text": DOC}], {})
            assert '"spans"' not in (await c.get(f"/batches/{job_id}/results")).text
            return (await c.get(f"/view/batches/{job_id}")).text

    assert marks(asyncio.run(go())) == {"name": "Alice Smith", "age": "34", "city": "Lisbon"}
