"""Bounded repetitions (extractor/contracts/bounds.py): bounds only added, never below a minimum,
and every value the bounded schema admits is admitted by the original."""

from __future__ import annotations

import jsonschema

from extractor.contracts.bounds import COMPACT_BOUNDS, Bounds, bound_repetitions
from extractor.contracts.contract import task_from_json_schema


def test_open_repetitions_get_a_bound_at_least_their_minimum() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "string"}, "minItems": 6},
            "b": {"type": "array", "items": {"type": "integer"}, "maxItems": 40},
            "code": {"type": "string", "pattern": "^[A-Z]+$"},
            "day": {"type": "string", "format": "date"},
            "kind": {"type": "string", "enum": ["x", "y"]},
            "note": {"type": ["string", "null"], "minLength": 300},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "required": []},
        },
        "required": ["a"],
        "additionalProperties": False,
        "$defs": {"any": {"anyOf": [{"type": "array", "items": {"$ref": "#/$defs/any"}},
                                    {"type": "object", "additionalProperties": True}]}},
    }
    out, added = bound_repetitions(schema, Bounds(items=4, extra_keys=2, chars=100))
    props = out["properties"]
    assert props["a"]["maxItems"] == 6 and props["a"]["items"]["maxLength"] == 100
    assert props["b"]["maxItems"] == 40  # its own bound stays
    assert "maxLength" not in props["code"] and "maxLength" not in props["day"] and "maxLength" not in props["kind"]
    assert props["note"]["maxLength"] == 300
    assert props["labels"]["maxProperties"] == 2
    assert "maxProperties" not in out  # a closed object takes no extra keys
    branches = out["$defs"]["any"]["anyOf"]
    assert branches[0]["maxItems"] == 4 and branches[1]["maxProperties"] == 2
    assert added == {"maxItems": 2, "maxLength": 3, "maxProperties": 2}
    assert "maxItems" not in schema["properties"]["a"]  # the input is left alone


def test_a_bounded_schema_is_a_subset_of_the_original() -> None:
    raw = {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "string"}}},
           "additionalProperties": {"type": "integer"}}
    task = task_from_json_schema(raw, name="open")
    bounded, added = bound_repetitions(task.strict_schema)
    assert added
    for value in ({"xs": ["a"] * 4, "n": 1}, {"xs": ["a" * 256]}, {}):
        jsonschema.validate(value, bounded)
        jsonschema.validate(value, raw)
    for value in ({"xs": ["a"] * 5}, {"xs": ["a" * 257]}):
        assert not jsonschema.Draft202012Validator(bounded).is_valid(value)
        jsonschema.validate(value, raw)


def test_an_already_bounded_schema_adds_nothing() -> None:
    schema = {"type": "object", "properties": {"k": {"type": "string", "enum": ["a"]},
                                               "n": {"type": "integer"}}, "additionalProperties": False}
    assert bound_repetitions(schema)[1] == {}


def test_the_service_response_keeps_what_was_bounded() -> None:
    from service.models import response_model

    task = task_from_json_schema({"type": "object", "properties": {"xs": {"type": "array"}}}, name="xs")
    meta = {"attempts": 2, "errors": [["cut"]], "latency_ms": 1.0, "tokens": {"prompt": 1, "completion": 2},
            "engine": "fake", "model": "m", "engine_ms": 1.0, "queue_ms": 0.0, "max_tokens": 64, "max_tokens_cap": 64,
            "bounded": {"maxItems": 1}}
    body = response_model(task).model_validate({"schema": "xs", "version": "1", "data": {"xs": []}, "meta": meta})
    dumped = body.model_dump(by_alias=True, exclude_none=True)["meta"]
    assert dumped["bounded"] == {"maxItems": 1} and dumped["max_tokens"] == 64


def test_compact_keeps_required_properties_tightens_maxima_and_stays_a_subset() -> None:
    raw = {"type": "object", "minProperties": 2,
           "properties": {"a": {"type": "string", "maxLength": 500}, "b": {"type": "integer"},
                          "c": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 9},
                          "d": {"type": "object", "properties": {"x": {"type": "string"}},
                                "additionalProperties": {"type": "integer"}}},
           "required": ["a"]}
    out, added = bound_repetitions(raw, COMPACT_BOUNDS)
    assert list(out["properties"]) == ["a", "b"]  # required, and one more for minProperties 2
    assert out["additionalProperties"] is False and out["properties"]["a"]["maxLength"] == 48
    assert added["properties_dropped"] == 2 and added["closed"] == 1
    inner, _ = bound_repetitions(raw["properties"]["d"], COMPACT_BOUNDS)
    assert inner["properties"] == {} and inner["maxProperties"] == 0  # open, but no extra key
    arrays, _ = bound_repetitions(raw["properties"]["c"], COMPACT_BOUNDS)
    assert arrays["maxItems"] == 2  # never below the minimum
    for value in ({"a": "x", "b": 1}, {"a": "x" * 48, "b": -3}):
        jsonschema.validate(value, out)
        jsonschema.validate(value, raw)
    assert not jsonschema.Draft202012Validator(out).is_valid({"a": "x", "c": [1, 2]})
    assert "maxLength" in raw["properties"]["a"] and raw["properties"]["a"]["maxLength"] == 500  # left alone
