"""The vllm-http engine's error paths, faked at the HTTP layer (httpx2.MockTransport under the
openai client). The happy path runs against a real vLLM server in tests/test_vllm_engines.py."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from extractor import (
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    ExtractionFailed,
    Extractor,
    GenerationRequest,
    GenerationResult,
    GrammarNotEnforced,
)
from extractor.engines.vllm_http import PROBE_SCHEMA, VllmHttpEngine, chat_request
from schemas import Person

GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
DOC = "Alice Smith is 34 years old and lives in Lisbon."
PROBE_ANSWER = '{"probe":"zq-7-enforced","n":7321}'


def completion(text: str, finish: str = "stop", logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": finish,
                         "logprobs": {"content": logprobs} if logprobs is not None else None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}


class FakeVllm:
    """A scripted vLLM server: models, version, and chat completions from a script.

    Each chat completion pops the next item of `script`: a string (content), an
    `httpx2.Response`, or an exception to raise (e.g. a timeout). The probe request is
    answered by `probe` (enforced by default)."""

    def __init__(self, script: list[Any], probe: str = PROBE_ANSWER) -> None:
        self.script = list(script)
        self.probe = probe
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        if path == "/version":
            return httpx2.Response(200, json={"version": "0.26.0"})
        body = json.loads(request.content)
        if body["response_format"]["json_schema"]["schema"] == PROBE_SCHEMA:
            return httpx2.Response(200, json=completion(self.probe))
        self.bodies.append(body)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        if isinstance(item, httpx2.Response):
            return item
        if isinstance(item, tuple):
            return httpx2.Response(200, json=completion(*item))
        return httpx2.Response(200, json=completion(item))


def engine_for(handler: Callable[[httpx2.Request], httpx2.Response], **kw: Any) -> VllmHttpEngine:
    return VllmHttpEngine("http://vllm.test/v1", transport=httpx2.MockTransport(handler), backoff_s=0.001, **kw)


def test_request_carries_the_strict_schema_greedy_seeded() -> None:
    req = GenerationRequest(messages=({"role": "user", "content": "x"},), schema={"type": "object"}, max_tokens=64,
                            seed=3, repetition_penalty=1.1)
    body = chat_request(req, "m")
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "extraction", "schema": {"type": "object"}, "strict": True}}
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.0, 3, 64)
    # vLLM refuses a per-request `structured_outputs` without a schema (400): never sent
    assert body["repetition_penalty"] == 1.1
    assert "repetition_penalty" not in chat_request(GenerationRequest(req.messages, req.schema, 64), "m")


def test_the_wire_body_is_exactly_the_built_request() -> None:
    """The engine posts `chat_request`'s body as it is (no SDK transform drops or renames a field)."""
    fake = FakeVllm([GOOD])
    engine = engine_for(fake)
    req = GenerationRequest(messages=({"role": "user", "content": DOC},), schema=Person.model_json_schema(), max_tokens=64,
                            seed=5, repetition_penalty=1.2)
    [result] = asyncio.run(engine.generate([req]))
    assert result.text == GOOD and (result.prompt_tokens, result.completion_tokens) == (11, 7)
    assert fake.bodies == [chat_request(req, "m")]


@pytest.mark.parametrize(("text", "finish", "enforced"), [
    ('{"probe":"zq-7-enforced","n":7321}', "stop", True),
    ('{\n  "probe" : "zq-7-enforced",\n "n": 7321 }', "stop", True),
    ('{\n\n  "probe"\n\n:\n\n\n', "length", True),   # any-whitespace server, padded to max_tokens
    ("Hello", "stop", False),
    ('{"name":"Alice"}', "stop", False),
    ("Hello Hello Hello", "length", False),
])
def test_probe_tells_an_enforcing_server_from_one_that_ignores_the_schema(text: str, finish: str, enforced: bool) -> None:
    from extractor.engines.vllm_http import probe_enforced

    assert probe_enforced(GenerationResult(text, finish, 1, 1)) is enforced  # type: ignore[arg-type]


def test_429_then_503_are_retried_with_backoff_then_succeed() -> None:
    server = FakeVllm([httpx2.Response(429, json={"error": "busy"}, headers={"Retry-After": "0"}),
                       httpx2.Response(503, json={"error": "down"}), GOOD])
    person = Extractor(engine_for(server)).extract(Person, DOC)
    assert person.name == "Alice Smith"
    assert len(server.bodies) == 3


def test_persistent_429_becomes_engine_overloaded_with_retry_after() -> None:
    server = FakeVllm([httpx2.Response(429, json={"error": "busy"}, headers={"Retry-After": "0"})] * 3)
    with pytest.raises(EngineOverloaded) as info:
        Extractor(engine_for(server, http_retries=2)).extract(Person, DOC)
    assert info.value.details["retry_after"] == 0.0


def test_persistent_503_becomes_engine_unavailable() -> None:
    server = FakeVllm([httpx2.Response(503, json={"error": "down"})] * 2)
    with pytest.raises(EngineUnavailable, match="503"):
        Extractor(engine_for(server, http_retries=1)).extract(Person, DOC)


def test_timeouts_become_engine_timeout() -> None:
    server = FakeVllm([httpx2.ReadTimeout("slow")] * 2)
    with pytest.raises(EngineTimeout):
        Extractor(engine_for(server, http_retries=1)).extract(Person, DOC)


def test_server_down_becomes_engine_unavailable() -> None:
    def down(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused")

    with pytest.raises(EngineUnavailable, match="cannot reach"):
        Extractor(engine_for(down, http_retries=1)).extract(Person, DOC)


def test_garbage_json_is_fed_back_and_retried() -> None:
    server = FakeVllm(["{garbage", GOOD])
    result = Extractor(engine_for(server)).run(Person, DOC)
    assert result.meta.attempts == 2
    assert result.meta.errors[0][0].startswith("not valid JSON")
    assert server.bodies[1]["messages"][-1]["content"].startswith("That JSON was rejected:\n- not valid JSON")


def test_truncated_output_is_retried_with_a_larger_budget_then_fails_typed() -> None:
    server = FakeVllm([('{"name":"Ali', "length"), ('{"name":"Alice Sm', "length")])
    from extractor import task_from_model

    cap = 2 * task_from_model(Person).max_tokens  # one larger budget, then the cap
    with pytest.raises(ExtractionFailed, match="cut off"):
        Extractor(engine_for(server), max_tokens_cap=cap).run(Person, DOC)
    assert server.bodies[1]["max_tokens"] == 2 * server.bodies[0]["max_tokens"]


def test_server_that_ignores_the_schema_is_refused() -> None:
    server = FakeVllm([GOOD], probe="Hello!")
    with pytest.raises(GrammarNotEnforced, match="ignored the JSON schema"):
        Extractor(engine_for(server)).extract(Person, DOC)
    assert server.bodies == []  # no document was sent to an untrusted server


def test_unknown_model_is_refused_at_start() -> None:
    engine = VllmHttpEngine("http://vllm.test/v1", model="other", transport=httpx2.MockTransport(FakeVllm([])))
    with pytest.raises(EngineUnavailable, match="does not serve 'other'"):
        asyncio.run(engine.start())


def test_reads_model_and_server_version_at_start() -> None:
    engine = engine_for(FakeVllm([]))
    asyncio.run(engine.start())
    assert (engine.model, engine.server_version) == ("m", "0.26.0")


def test_sync_calls_in_a_row_each_with_their_own_event_loop() -> None:
    server = FakeVllm([GOOD, GOOD, GOOD])
    extractor = Extractor(engine_for(server))
    for _ in range(3):
        assert extractor.extract(Person, DOC).age == 34


def token_logprobs(pieces: list[bytes], logprob: float, with_bytes: bool = True) -> list[dict[str, Any]]:
    """The chat completion's `logprobs.content`, as vLLM sends it: `token` is each token decoded alone."""
    return [{"token": p.decode("utf-8", errors="replace"), "logprob": logprob,
             "bytes": list(p) if with_bytes else None, "top_logprobs": []} for p in pieces]


def test_logprobs_are_asked_only_when_the_request_wants_them() -> None:
    req = GenerationRequest(messages=({"role": "user", "content": "x"},), schema={"type": "object"}, max_tokens=8)
    assert "logprobs" not in chat_request(req, "m")
    assert chat_request(GenerationRequest(req.messages, req.schema, 8, logprobs=True), "m")["logprobs"] is True


@pytest.mark.parametrize("with_bytes", [True, False])
def test_confidence_from_the_servers_token_logprobs(with_bytes: bool) -> None:
    text = '{"name":"José Li","age":34,"city":"Lisbon","email":null}'
    e_acute = "é".encode()
    pieces = [b'{"name":"', b"Jos", e_acute[:1], e_acute[1:], b" Li", b'","age":', b"34", b',"city":"', b"Lisbon",
              b'","email":', b"null", b"}"]
    assert b"".join(pieces).decode() == text
    server = FakeVllm([httpx2.Response(200, json=completion(text, logprobs=token_logprobs(pieces, -0.1, with_bytes)))])
    doc = "José Li is 34 years old and lives in Lisbon."
    result = Extractor(engine_for(server), confidence=True, spans=True).run(Person, doc)
    assert server.bodies[0]["logprobs"] is True
    # the two halves of "é" belong to the name whether the server sends bytes or not
    assert result.meta.confidence == pytest.approx({"name": math.exp(-0.4), "age": math.exp(-0.1),
                                                    "city": math.exp(-0.1), "email": math.exp(-0.1)})
    assert result.meta.spans is not None and result.meta.spans["name"][0].match == "exact"


def test_parse_choice_takes_token_texts_from_their_bytes() -> None:
    from extractor.engines.vllm_http import parse_choice

    e_acute = "é".encode()
    body = completion('"é"', logprobs=token_logprobs([b'"', e_acute[:1], e_acute[1:], b'"'], -0.5))
    result = parse_choice(body)
    assert [t.token for t in result.logprobs or ()] == ['"', "", "é", '"']
    without = completion('"é"', logprobs=token_logprobs([b'"', e_acute[:1], e_acute[1:], b'"'], -0.5, with_bytes=False))
    assert [t.token for t in parse_choice(without).logprobs or ()] == [
        '"', "\ufffd", "\ufffd", '"']


def test_a_schema_the_servers_grammar_backend_refuses_is_schema_rejected_then_decoded_under_its_skeleton() -> None:
    from extractor import task_from_json_schema
    from extractor.errors import SchemaRejected

    refused = httpx2.Response(400, json={"object": "error", "type": "BadRequestError", "code": 400,
                                         "message": "Grammar error: Ref recusion limit reached: 3"})
    task = task_from_json_schema({"type": "object", "properties": {"a": {"type": "string"}}}, name="raw")
    with pytest.raises(SchemaRejected, match="recusion"):
        Extractor(engine_for(FakeVllm([refused]), grammar_timeout_s=0), grammar_fallback=False).run(task, DOC)
    server = FakeVllm([refused, '{"a":"x"}'])
    result = Extractor(engine_for(server, grammar_timeout_s=0)).run(task, DOC)
    assert result.data == {"a": "x"} and result.meta.grammar == "validate-only:refused"
    assert server.bodies[1]["response_format"]["json_schema"]["schema"] != task.strict_schema
