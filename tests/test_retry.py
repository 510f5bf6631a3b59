"""The validation loop, driven by a scripted engine."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from extractor import EmptyDocument, ExtractionFailed, Extractor, GenerationResult, ScriptedEngine, task_from_json_schema, task_from_model
from extractor.pipeline.loop import extract_one
from extractor.pipeline.options import ExtractOptions
from schemas import Invoice, Person

GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
DOC = "Alice Smith is 34 years old and lives in Lisbon."


def test_valid_first_output_is_returned_typed() -> None:
    engine = ScriptedEngine([GOOD])
    result = Extractor(engine).run(Person, DOC)
    assert result.data == Person(name="Alice Smith", age=34, city="Lisbon", email=None)
    assert result.meta.attempts == 1
    assert result.meta.errors == []
    assert (result.meta.engine, result.meta.model, result.meta.schema, result.meta.version) == (
        "fake", "scripted", "person", "3")


def test_schema_error_is_fed_back_exactly_then_retried() -> None:
    engine = ScriptedEngine(['{"name":34,"age":34,"city":"Lisbon","email":null}', GOOD])
    result = Extractor(engine).run(Person, DOC)
    assert result.meta.attempts == 2
    assert result.meta.errors == [["$.name: 34 is not of type 'string'"]]
    retry_messages = engine.requests[1].messages
    assert retry_messages[-2] == {"role": "assistant",
                                  "content": '{"name":34,"age":34,"city":"Lisbon","email":null}'}
    assert retry_messages[-1] == {
        "role": "user",
        "content": "That JSON was rejected:\n- $.name: 34 is not of type 'string'\n"
                   "Return the corrected JSON object for the same document.",
    }
    # the first request is untouched by the retry
    assert len(engine.requests[0].messages) == len(retry_messages) - 2


def test_model_validator_error_is_fed_back() -> None:
    bad = {"vendor": "V", "invoice_number": "1", "date": "2024-01-02", "currency": "EUR",
           "line_items": [{"description": "a", "quantity": 2, "unit_price": 5}], "total": 11}
    good = {**bad, "total": 10}
    engine = ScriptedEngine([json.dumps(bad), json.dumps(good)])
    result = Extractor(engine).run(Invoice, "an invoice")
    assert result.data.total == 10
    assert result.meta.errors == [[
        "$: line items add up to 10.00 but total is 11.00; check quantities, unit prices and the total"]]
    assert "line items add up to 10.00" in engine.requests[1].messages[-1]["content"]


def test_validators_see_the_document_as_context() -> None:
    engine = ScriptedEngine(['{"name":"Alice Smith","age":34,"city":"Lisbon","email":"a@b.c"}',
                             '{"name":"Alice Smith","age":34,"city":"Lisbon","email":"alice@x.org"}'])
    extractor = Extractor(engine)
    assert extractor.extract(Person, DOC).email is None  # invented: not in the document
    assert extractor.extract(Person, DOC + " Mail: alice@x.org").email == "alice@x.org"


def test_invalid_json_error_then_exhaustion_raises_typed_error() -> None:
    engine = ScriptedEngine(["{not json", "[]", '{"name":1}'])
    with pytest.raises(ExtractionFailed) as info:
        Extractor(engine, max_retries=2).run(Person, DOC)
    assert info.value.attempts == 3
    assert info.value.errors[0] == ["not valid JSON: Expecting property name enclosed in double quotes at character 1"]
    assert info.value.errors[1] == ["$: [] is not of type 'object'"]
    assert len(engine.requests) == 3
    assert info.value.last_output == '{"name":1}' and info.value.details["last_output"] == '{"name":1}'


def test_a_long_last_output_keeps_its_start_and_end() -> None:
    looped = '{"name":"' + "ab" * 5000 + '"'
    with pytest.raises(ExtractionFailed) as info:
        Extractor(ScriptedEngine([looped] * 3), max_retries=2).run(Person, DOC)
    last = info.value.last_output
    assert last is not None and last.startswith('{"name":"abab') and last.endswith('abab"')
    assert "[... 6010 characters ...]" in last and len(last) < 4100


def test_length_is_a_failure_retried_once_with_a_larger_budget() -> None:
    cut = GenerationResult(text='{"name":"Ali', finish_reason="length", prompt_tokens=10, completion_tokens=5)
    engine = ScriptedEngine([cut, GOOD])
    task = task_from_model(Person)
    result = asyncio.run(extract_one(engine, task, DOC))
    assert result.meta.attempts == 2
    assert engine.requests[1].max_tokens == 2 * engine.requests[0].max_tokens
    assert engine.requests[1].messages == engine.requests[0].messages  # nothing fed back for a cut output


def test_a_cut_output_grows_the_budget_up_to_the_cap_then_gives_up() -> None:
    cut = GenerationResult(text="{", finish_reason="length", prompt_tokens=10, completion_tokens=5)
    task = task_from_model(Person)
    cap = task.max_tokens * 4
    engine = ScriptedEngine([cut, cut, cut, GOOD])
    with pytest.raises(ExtractionFailed, match="cut off"):
        asyncio.run(extract_one(engine, task, DOC, ExtractOptions(max_retries=6, max_tokens_cap=cap,
                                                                  bound_on_cut=False)))
    assert [r.max_tokens for r in engine.requests] == [task.max_tokens, 2 * task.max_tokens, cap]


TAGS_SCHEMA = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
               "required": ["tags"], "additionalProperties": False}


def test_cut_at_the_cap_retries_once_under_bounded_repetitions() -> None:
    task = task_from_json_schema(TAGS_SCHEMA, name="tags")
    looping = GenerationResult(text='{"tags":["a","a","a","a","a","a"', finish_reason="length", prompt_tokens=10,
                               completion_tokens=64)
    engine = ScriptedEngine([looping, '{"tags":["a","b"]}'])
    options = ExtractOptions(max_retries=2, max_tokens_cap=task.max_tokens)  # the first budget is the cap
    result = asyncio.run(extract_one(engine, task, "tags: a, b", options))
    assert result.data == {"tags": ["a", "b"]}
    assert result.meta.bounded == {"maxItems": 1, "maxLength": 1}
    assert result.meta.to_dict()["bounded"] == {"maxItems": 1, "maxLength": 1}
    first, second = (r.schema for r in engine.requests)
    assert "maxItems" not in first["properties"]["tags"]
    assert second["properties"]["tags"]["maxItems"] == 4
    assert second["properties"]["tags"]["items"]["maxLength"] == 256
    assert engine.requests[1].max_tokens == engine.requests[0].max_tokens


def test_cut_under_bounds_then_compact_gives_up_and_no_bound_without_an_attempt_left() -> None:
    task = task_from_json_schema(TAGS_SCHEMA, name="tags")
    cut = GenerationResult(text='{"tags":["a"', finish_reason="length", prompt_tokens=10, completion_tokens=64)
    engine = ScriptedEngine([cut, cut, cut, '{"tags":["a"]}'])
    with pytest.raises(ExtractionFailed, match="cut off"):
        asyncio.run(extract_one(engine, task, "tags: a", ExtractOptions(max_retries=4, max_tokens_cap=task.max_tokens)))
    assert len(engine.requests) == 3  # the task's schema, bounded, compact: then no more on length
    engine = ScriptedEngine([cut, '{"tags":["a"]}'])
    with pytest.raises(ExtractionFailed, match="cut off"):
        asyncio.run(extract_one(engine, task, "tags: a", ExtractOptions(max_retries=0, max_tokens_cap=task.max_tokens)))
    assert len(engine.requests) == 1
    assert "bounded" not in Extractor(ScriptedEngine(['{"tags":["a"]}'])).run(task, "tags: a").meta.to_dict()


WIDE_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, **{f"opt_{i}": {"type": "string"} for i in range(30)},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10}}, "required": ["id", "tags"]}


def test_cut_under_bounds_again_the_last_attempt_is_under_the_compact_schema() -> None:
    """Seen on the H200: a schema with many optional properties, cut at the cap under bounded
    repetitions too (the model writes every property). The last attempt keeps the required
    properties only, one item, short strings; its record validates against the user's schema."""
    task = task_from_json_schema(WIDE_SCHEMA, name="wide")
    cut = GenerationResult(text='{"id":"1","opt_0":"x"', finish_reason="length", prompt_tokens=10, completion_tokens=64)
    engine = ScriptedEngine([cut, cut, '{"id":"1","tags":["a"]}'])
    result = asyncio.run(extract_one(engine, task, "id 1, tag a", ExtractOptions(max_retries=2, max_tokens_cap=task.max_tokens)))
    assert result.data == {"id": "1", "tags": ["a"]}
    bounded, compact = engine.requests[1].schema, engine.requests[2].schema
    assert "opt_0" in bounded["properties"] and bounded["properties"]["tags"]["maxItems"] == 10
    assert set(compact["properties"]) == {"id", "tags"} and compact["additionalProperties"] is False
    assert compact["properties"]["tags"]["maxItems"] == 1 and compact["properties"]["id"]["maxLength"] == 48
    assert result.meta.bounded is not None and result.meta.bounded["properties_dropped"] == 30
    jsonschema.validate(result.data, WIDE_SCHEMA)


def test_the_budget_and_its_cap_are_in_meta() -> None:
    cut = GenerationResult(text="{", finish_reason="length", prompt_tokens=10, completion_tokens=5)
    task = task_from_model(Person)
    engine = ScriptedEngine([cut, GOOD])
    result = asyncio.run(extract_one(engine, task, DOC, ExtractOptions(max_tokens_cap=4096)))
    assert (result.meta.max_tokens, result.meta.max_tokens_cap) == (2 * task.max_tokens, 4096)


def test_empty_document_never_reaches_the_engine() -> None:
    engine = ScriptedEngine([])
    with pytest.raises(EmptyDocument):
        Extractor(engine).run(Person, " \n\t ")
    assert engine.requests == []


def test_tokens_are_summed_over_attempts() -> None:
    engine = ScriptedEngine([
        GenerationResult("{", "stop", 100, 1),
        GenerationResult(GOOD, "stop", 120, 20),
    ])
    meta = Extractor(engine).run(Person, DOC).meta
    assert (meta.prompt_tokens, meta.completion_tokens) == (220, 21)


def test_first_attempt_is_greedy_and_retries_sample_with_fresh_seeds() -> None:
    cut = GenerationResult(text='{"name":"Ali', finish_reason="length", prompt_tokens=10, completion_tokens=5)
    engine = ScriptedEngine([cut, '{"name":1}', GOOD])
    asyncio.run(extract_one(engine, task_from_model(Person), DOC, ExtractOptions(max_retries=2, retry_temperature=0.7)))
    assert [r.temperature for r in engine.requests] == [0.0, 0.7, 0.7]
    assert len({r.seed for r in engine.requests}) == 3
    assert all(r.repetition_penalty == 1.0 for r in engine.requests)


def test_a_looping_output_is_bounded_at_once_instead_of_growing_to_the_cap() -> None:
    """On vLLM SmolLM2 looped on real-world schemas (`"role_19": "Sales Manager",` ...) and each
    retry only grew the budget: the retries ran out before the bounded attempt. A cut output that
    ends in a loop gets the bounded schema on its next attempt, with the budget grown as well."""
    schema = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"],
              "additionalProperties": {"type": "string"}}
    task = task_from_json_schema(schema, name="roles")
    loop = '{\n  "id": "1",\n' + "".join(f'  "role_{i}": "Sales Manager",\n' for i in range(1, 9)) + '  "ro'
    cut = GenerationResult(text=loop, finish_reason="length", prompt_tokens=10, completion_tokens=64)
    engine = ScriptedEngine([cut, '{"id":"1","role_1":"Sales Manager"}'])
    result = asyncio.run(extract_one(engine, task, DOC, ExtractOptions(max_retries=1, max_tokens_cap=4096)))
    assert result.data == {"id": "1", "role_1": "Sales Manager"} and result.meta.bounded is not None
    first, second = engine.requests
    assert second.schema["maxProperties"] == 5 and "maxProperties" not in first.schema
    assert second.max_tokens == 2 * first.max_tokens


def test_a_cut_output_that_is_no_loop_only_grows_the_budget() -> None:
    cut = GenerationResult(text='{"name":"Alice Smith","age":3', finish_reason="length", prompt_tokens=10,
                           completion_tokens=5)
    engine = ScriptedEngine([cut, GOOD])
    result = asyncio.run(extract_one(engine, task_from_model(Person), DOC))
    assert result.meta.bounded is None and engine.requests[1].schema == engine.requests[0].schema


def test_a_whole_record_followed_by_whitespace_to_the_budget_is_taken() -> None:
    """vLLM's grammar allows whitespace after the record: SmolLM2 wrote the whole record, then
    newlines until max_tokens. The record is complete and valid: it is the answer."""
    whole = GenerationResult(text=GOOD + "\n" * 40, finish_reason="length", prompt_tokens=10, completion_tokens=64)
    engine = ScriptedEngine([whole])
    result = asyncio.run(extract_one(engine, task_from_model(Person), DOC))
    assert result.meta.attempts == 1 and result.data.name == "Alice Smith"


@pytest.mark.parametrize(("text", "loops"), [
    ('{\n  "a": "1.0",\n  "aVersion": "1.0",\n  "aVersion": "1.0",\n  "aVersion": "1.0",\n  "aVer', True),
    ('{"url": "https://example.com/mia-mia-mia-mia-mia-mia-mia-mia-mia-mia-mi', True),
    ('{"summary": "' + "the testimonials in the Eastern region, and " * 5 + "the te", True),
    ('{"items": [\n' + "".join(f'  {{"description": "Item {c}", "qty": {i}}},\n' for i, c in enumerate("ABCDEF")) + "  {", False),
    ('{"values": [\n' + "".join(f"    {i * 7},\n" for i in range(30)) + "    ", False),
    ('{\n  "a": {\n    "b": "1234567890",\n    "c": "1234567890"\n  },\n  "d": {\n    "b": "', False),
])
def test_looping_tells_a_loop_from_a_long_output(text: str, loops: bool) -> None:
    from extractor.contracts.bounds import looping

    assert looping(text) is loops
