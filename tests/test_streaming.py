"""Streaming a short document's fields as the model writes them (`extractor.pipeline.streaming`,
`TextStreaming`): the settled-field reader, the field's own validation before it is sent, pinning
sent fields on retries, the scripted, vllm-http (a fake server on loopback) and local engines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import httpx2
import pytest

from extractor import AsyncClient, Engine, Extractor, GenerationRequest, GenerationResult, ScriptedEngine
from extractor.contracts.registry import default_registry
from extractor.engines.base import TextStreaming, generate_streaming
from extractor.pipeline.streaming import FieldStream, SettledFields, pin_fields, settle
from tests.fake_openai import GOOD, Reply, fake_openai
from tests.service_support import BASE, make_app

ALICE = "Alice Smith, 34, lives in Lisbon."
INVOICE_DOC = ("ACME Tools Ltd\nInvoice INV-7 dated 2025-03-01\n2 x Hammer at 12.50\n1 x Saw at 30.00\n"
               "Total due: 55.00 EUR")
GOOD_INVOICE = {"vendor": "ACME Tools Ltd", "invoice_number": "INV-7", "date": "2025-03-01", "currency": "EUR",
                "line_items": [{"description": "Hammer", "quantity": 2, "unit_price": 12.5},
                               {"description": "Saw", "quantity": 1, "unit_price": 30.0}],
                "total": 55.0}


def _prefixes(text: str) -> list[list[tuple[str, Any]]]:
    reader = SettledFields()
    return [reader.feed(text[:n]) for n in range(1, len(text) + 1)]


def test_a_field_settles_when_the_json_after_it_begins() -> None:
    text = '{"name": "A, \\"B\\" {c}", "age": 34, "tags": [1, {"x": "]"}], "n": null}'
    found = _prefixes(text)
    flat = [pair for step in found for pair in step]
    # the last field is closed by the record's own brace: it comes with the whole record
    assert flat == [("name", 'A, "B" {c}'), ("age", 34), ("tags", [1, {"x": "]"}])]
    # a number is settled only by the comma after it: "34" could still become "345"
    at = next(i for i, step in enumerate(found) if ("age", 34) in step)
    assert text[at] == ","


def test_a_new_attempt_is_read_from_its_start_and_a_non_object_gives_nothing() -> None:
    reader = SettledFields()
    assert reader.feed('{"a": 1,') == [("a", 1)]
    assert reader.feed('{"a": 2,') == [("a", 2)]  # not an extension: another attempt
    assert SettledFields().feed('[1, 2, 3]') == []


def test_a_field_is_sent_only_if_its_own_validation_passes() -> None:
    person = default_registry().get("person")
    assert settle(person, "age", 34, ALICE) == (True, 34)
    assert settle(person, "email", "alice@example.com", ALICE) == (True, None)  # not in the document: dropped
    assert settle(person, "nickname", "Al", ALICE) == (False, None)
    invoice = default_registry().get("invoice")
    # the invoice's model validator needs the whole record; the total itself is fine
    assert settle(invoice, "total", 55.0, INVOICE_DOC) == (True, 55.0)
    assert settle(invoice, "date", "2025-03-01", INVOICE_DOC) == (True, "2025-03-01")
    assert settle(invoice, "date", "yesterday", INVOICE_DOC) == (False, None)


def test_pinned_fields_become_consts() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    assert pin_fields(schema, {}) is schema
    pinned = pin_fields(schema, {"a": "x"})
    assert pinned["properties"] == {"a": {"const": "x"}, "b": {"type": "integer"}} and pinned["required"] == ["a"]
    # a retry under the compact bounds (required properties only) still holds every field sent
    compact = {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}
    assert pin_fields(compact, {"a": "x"}) == {"type": "object", "properties": {"b": {"type": "integer"},
                                               "a": {"const": "x"}}, "required": ["b", "a"]}


def _events(engine: Any, schema: str, text: str, **options: Any) -> list[tuple[float, dict[str, Any]]]:
    async def go() -> list[tuple[float, dict[str, Any]]]:
        started = time.perf_counter()
        async with Extractor(engine) as ex:
            return [(time.perf_counter() - started, e) async for e in ex.astream(schema, text, **options)]

    return asyncio.run(go())


def test_fields_come_as_the_engine_writes_them_before_the_result() -> None:
    engine = ScriptedEngine([GOOD], stream_step_s=0.05)
    assert isinstance(engine, TextStreaming)
    timed = _events(engine, "person", ALICE, grounded_decoding=False)
    events = [e for _, e in timed]
    assert [e["event"] for e in events] == ["field"] * 4 + ["result"]
    assert {e["field"]: e["value"] for e in events[:4]} == events[-1]["data"] == json.loads(GOOD)
    first, last = timed[0][0], timed[-2][0]
    assert last - first >= 0.1  # the first field was sent while the engine was still writing


def test_a_retry_keeps_every_sent_field_and_no_field_changes() -> None:
    wrong_total = {**GOOD_INVOICE, "total": 99.0}  # the items add up to 55: the model validator refuses it
    # the first answer settles vendor ... line_items, then the total the validator refuses
    engine = ScriptedEngine([json.dumps(wrong_total), json.dumps(GOOD_INVOICE)], stream_step_s=0.001)
    events = [e for _, e in _events(engine, "invoice", INVOICE_DOC, grounded_decoding=False)]
    result = events[-1]
    assert result["event"] == "result" and result["meta"]["attempts"] == 2
    sent: dict[str, Any] = {}
    for event in events[:-1]:
        assert event["event"] == "field"
        assert event["field"] not in sent  # each field once
        sent[event["field"]] = event["value"]
    assert sent == result["data"]
    # the retry decoded with what was sent pinned, the refused total left free
    retry = engine.requests[1].schema["properties"]
    assert retry["vendor"] == {"const": "ACME Tools Ltd"}
    assert retry["line_items"] == {"const": GOOD_INVOICE["line_items"]}
    assert "const" not in retry["total"]


def test_a_field_refused_on_its_own_is_sent_with_the_result() -> None:
    bad_date = {**GOOD_INVOICE, "date": "March 1st"}
    engine = ScriptedEngine([json.dumps(bad_date), json.dumps(GOOD_INVOICE)], stream_step_s=0.001)
    events = [e for _, e in _events(engine, "invoice", INVOICE_DOC, grounded_decoding=False)]
    dates = [e for e in events if e.get("field") == "date"]
    assert [d["value"] for d in dates] == ["2025-03-01"]
    assert "const" not in engine.requests[1].schema["properties"]["date"]


def test_an_engine_that_cannot_stream_gives_its_text_once() -> None:
    class Whole(Engine):
        name, model = "whole", "m"

        async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
            return [GenerationResult(GOOD, "stop", 1, 1) for _ in requests]

    seen: list[str] = []
    request = GenerationRequest(messages=({"role": "user", "content": "x"},), schema={}, max_tokens=8)
    assert not isinstance(Whole(), TextStreaming)
    result = asyncio.run(generate_streaming(Whole(), request, seen.append))
    assert seen == [result.text] == [GOOD]


def test_the_service_streams_fields_before_the_result() -> None:
    app = make_app(ScriptedEngine(lambda request: GOOD, stream_step_s=0.02))

    async def go() -> list[dict[str, Any]]:
        async with AsyncClient(BASE, transport=httpx2.ASGITransport(app=app)) as client:
            return [e async for e in client.stream("person", ALICE, grounded_decoding=False)]

    events = asyncio.run(go())
    assert [e["event"] for e in events] == ["field"] * 4 + ["result"]
    assert events[-1]["data"] == json.loads(GOOD)


def _stream_over_http(url: str, on_text: Any = lambda text: None, max_tokens: int = 64, **engine: Any) -> Any:
    """One request streamed by a `VllmHttpEngine` on `url` (a fake server), the engine closed after."""
    from extractor.engines.vllm_http import VllmHttpEngine

    client = VllmHttpEngine(url, grammar_timeout_s=0, **engine)

    async def go() -> Any:
        request = GenerationRequest(messages=({"role": "user", "content": ALICE},), schema={"type": "object"},
                                    max_tokens=max_tokens)
        try:
            return await client.generate_streaming(request, on_text)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_vllm_http_streams_the_completion_and_reads_it_back() -> None:
    with fake_openai(lambda body: Reply(GOOD, step=0.05)) as server:
        seen: list[tuple[float, str]] = []
        started = time.perf_counter()
        result = _stream_over_http(server.url, lambda t: seen.append((time.perf_counter() - started, t)))
        streamed = [b for b in server.bodies if b.get("stream")]
    assert result.text == GOOD and result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens) == (11, 7)
    assert streamed and streamed[0]["stream_options"] == {"include_usage": True}
    texts = [t for _, t in seen]
    assert texts[0] == '{"name":"Alice Smith",' and texts[-1] == GOOD
    assert all(GOOD.startswith(t) for t in texts)
    assert seen[-1][0] - seen[0][0] >= 0.1  # the first piece came well before the end


def test_vllm_http_stream_ends_with_the_length_cut() -> None:
    cut = GOOD[:20]
    with fake_openai(lambda body: Reply(cut, finish="length")) as server:
        result = _stream_over_http(server.url, max_tokens=8)
    assert (result.text, result.finish_reason) == (cut, "length")


def test_field_stream_pins_only_what_it_sent() -> None:
    watch = FieldStream(default_registry().get("person"), ALICE)
    watch.on_text('{"name":"Alice Smith","email":"a@b.c","age":34,"city":"Lisbon"}')
    assert watch.pinned == {"name": "Alice Smith", "email": "a@b.c", "age": 34}
    assert watch.sent["email"] is None  # sent as the validator keeps it; pinned as written


@pytest.mark.model
def test_the_local_engine_streams_fields_before_its_generation_ends() -> None:
    from extractor.engines.local import LocalEngine

    engine = LocalEngine()
    try:
        seen: list[tuple[float, str]] = []

        async def go() -> Any:
            task = default_registry().get("person")
            from extractor.pipeline.prompt import build_messages

            request = GenerationRequest(messages=tuple(build_messages(task, ALICE)), schema=task.strict_schema,
                                        max_tokens=128)
            started = time.perf_counter()
            result = await engine.generate_streaming(request, lambda t: seen.append((time.perf_counter() - started, t)))
            return result, time.perf_counter() - started

        result, total = asyncio.run(go())
        assert seen[-1][1] == result.text
        assert len(seen) >= 4 and all(result.text.startswith(t) for _, t in seen)
        assert seen[0][0] < total
        events = [e for _, e in _events(engine, "person", ALICE)]
        assert [e["event"] for e in events][-1] == "result"
        fields = {e["field"]: e["value"] for e in events if e["event"] == "field"}
        assert fields == events[-1]["data"] == {"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None}
    finally:
        engine.close()


def test_gates_of_the_whole_record_that_a_field_alone_can_fail_hold_it_back() -> None:
    from pydantic import BaseModel, Field, ValidationInfo, field_serializer, field_validator, model_validator

    from extractor import task_from_json_schema
    from extractor.contracts.contract import task_from_model
    from extractor.pipeline.streaming import FieldGates

    raw = task_from_json_schema({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                                          "uniqueItems": True}},
                                 "required": ["tags"]}, name="tagged")
    assert settle(raw, "tags", ["a", "a"], "a b") == (False, None)  # the user's own schema refuses it
    assert settle(raw, "tags", ["a", "b"], "a b") == (True, ["a", "b"])

    person = default_registry().get("person")
    grounded = FieldGates(require_grounded=True)
    assert settle(person, "name", "Bob Jones", ALICE, grounded) == (False, None)
    assert settle(person, "name", "Alice Smith", ALICE, grounded) == (True, "Alice Smith")
    echo = FieldGates(system="Extract the person's name, age and city from the document below.")
    assert settle(person, "city", "Extract the person's name, age and city from the document below.", ALICE,
                  echo) == (False, None)

    class Reads(BaseModel):
        a: int = 0
        b: int = 0
        secret: str = Field("", exclude=True)
        shout: str = ""

        @field_validator("b")
        @classmethod
        def over_a(cls, value: int, info: ValidationInfo) -> int:
            return value // info.data["a"]  # another field's value: only the whole record has it

        @field_serializer("shout")
        def upper(self, value: str) -> str:
            return value.upper()

    reads = task_from_model(Reads)
    assert settle(reads, "b", 5, "") == (False, None)  # not the default a=0's ZeroDivisionError, nor b=0
    assert settle(reads, "secret", "x", "") == (False, None)  # the result leaves it out
    assert settle(reads, "shout", "abc", "") == (True, "ABC")  # as the result serializes it

    class Before(BaseModel):
        a: str = ""

        @model_validator(mode="before")
        @classmethod
        def lower(cls, data: Any) -> Any:
            return {k: v.lower() for k, v in data.items()} if isinstance(data, dict) else data

    assert settle(task_from_model(Before), "a", "BOB", "") == (False, None)


def test_a_pinned_schema_the_engine_cannot_compile_drops_the_pins() -> None:
    from extractor.errors import GrammarTimeout

    wrong_total = {**GOOD_INVOICE, "total": 99.0}

    def script(request: GenerationRequest) -> str | Exception:
        if any("const" in node for node in request.schema["properties"].values()):
            return GrammarTimeout("$", "too slow with the consts")
        return json.dumps(wrong_total if len(engine.requests) == 1 else GOOD_INVOICE)

    engine = ScriptedEngine(script)
    events = [e for _, e in _events(engine, "invoice", INVOICE_DOC, grounded_decoding=False)]
    assert events[-1]["event"] == "result" and events[-1]["data"]["total"] == 55.0
    assert not any("const" in node for node in engine.requests[-1].schema["properties"].values())


def test_a_consumer_that_stops_early_leaves_nothing_running() -> None:
    async def go() -> set[asyncio.Task[Any]]:
        engine = ScriptedEngine([GOOD], stream_step_s=0.05)
        async with Extractor(engine) as ex:
            stream = ex.astream("person", ALICE, grounded_decoding=False)
            async for event in stream:
                assert event["event"] == "field"
                break
            await stream.aclose()
        await asyncio.sleep(0.1)
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(go()) == set()


def test_vllm_http_sends_a_cut_stream_again() -> None:
    replies = [Reply(GOOD, cut=True), Reply(GOOD)]
    with fake_openai(lambda body: replies.pop(0) if body.get("stream") else Reply(GOOD)) as server:
        result = _stream_over_http(server.url, backoff_s=0.01)
        assert sum(bool(b.get("stream")) for b in server.bodies) == 2
    assert (result.text, result.finish_reason) == (GOOD, "stop")
