"""The contract every engine passes: imported by each engine's test module."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema

from extractor import Engine, GenerationRequest, task_from_model
from extractor.pipeline.prompt import build_messages
from schemas import Person

PERSON = task_from_model(Person)
DOCS = [
    "Alice Smith is 34 years old and lives in Lisbon.",
    "Kenji Sato is 19 years old and lives in Osaka.",
    "John Doe, 28, lives in Paris. You can write to him at john.doe@example.com.",
]


def request(doc: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=build_messages(PERSON, doc), schema=PERSON.strict_schema,
                             max_tokens=kw.pop("max_tokens", PERSON.max_tokens), **kw)


def check_engine_contract(engine: Engine) -> None:
    assert isinstance(engine, Engine)

    # a batch: one result per request, in order, each valid against the schema
    results = asyncio.run(engine.generate([request(d) for d in DOCS]))
    assert engine.name and engine.model  # known once the engine has started
    assert len(results) == len(DOCS)
    for doc, result in zip(DOCS, results, strict=True):
        assert result.finish_reason == "stop", result
        data = json.loads(result.text)
        jsonschema.validate(data, PERSON.strict_schema)
        assert data["name"].split()[0] in doc  # the right document went with the right result
        assert result.prompt_tokens > 0 and result.completion_tokens > 0

    # concurrent calls batch together and still line up
    async def concurrent() -> list[Any]:
        return await asyncio.gather(*(engine.generate([request(d)]) for d in DOCS))

    for doc, (result,) in zip(DOCS, asyncio.run(concurrent()), strict=True):
        assert json.loads(result.text)["name"].split()[0] in doc

    # a budget too small for the JSON ends with finish_reason "length"
    (cut,) = asyncio.run(engine.generate([request(DOCS[0], max_tokens=3)]))
    assert cut.finish_reason == "length"
    assert cut.completion_tokens == 3

    # logprobs where the engine has them: one per generated token, all <= 0
    (lp,) = asyncio.run(engine.generate([request(DOCS[0], logprobs=True)]))
    if lp.logprobs is not None:
        assert len(lp.logprobs) == lp.completion_tokens
        assert all(t.logprob <= 0 for t in lp.logprobs)

    # greedy decoding is deterministic
    (a,) = asyncio.run(engine.generate([request(DOCS[1])]))
    (b,) = asyncio.run(engine.generate([request(DOCS[1])]))
    assert a.text == b.text
