"""Small hand-written schemas for each shape real schemas have (issue 12, point 2).

Each test prepares a schema and checks the grammar schema and the report; where it matters, a
value generated for the grammar schema (here: written by hand) must validate against the
ORIGINAL schema, and `jsonschema` checks the grammar schema accepts the valid example.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from extractor.contracts.prepare import SchemaRefused, prepare_schema


def grammar_accepts(schema: dict[str, Any], value: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(schema).is_valid(value))


def original_accepts(schema: Any, value: Any) -> bool:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return bool(cls(schema).is_valid(value))


def check(raw: Any, good: Any, bad: Any = None) -> Any:
    """Prepare `raw`: its grammar schema accepts `good` (wrapped as the grammar writes it) and,
    where the keyword is enforced, refuses `bad`."""
    prepared = prepare_schema(raw)
    assert original_accepts(raw, good)
    assert grammar_accepts(prepared.schema, prepared.wrap(good))
    assert prepared.finish(prepared.wrap(good)) == good
    if bad is not None:
        assert not grammar_accepts(prepared.schema, prepared.wrap(bad))
    return prepared


@pytest.mark.parametrize(("raw", "good", "bad"), [
    ({"type": "array", "items": {"type": "integer"}}, [1, 2], ["x"]),
    ({"type": "string", "minLength": 2}, "ab", "a"),
    ({"enum": ["a", "b"]}, "b", "c"),
    ({"type": "number", "minimum": 0}, 1.5, -1),
])
def test_non_object_roots_are_wrapped_and_unwrapped(raw: Any, good: Any, bad: Any) -> None:
    prepared = check(raw, good, bad)
    assert prepared.wrapped
    assert prepared.schema["required"] == ["value"]
    assert prepared.finish({"value": good}) == good


def test_empty_and_true_are_any_value_bounded() -> None:
    raws: tuple[Any, ...] = ({}, True)
    for raw in raws:
        prepared = check(raw, {"a": [1, "x", None]})
        assert prepared.schema["properties"]["value"] == {"$ref": "#/$defs/any_json"}
        deep: Any = 1
        for _ in range(10):
            deep = [deep]
        assert grammar_accepts(prepared.schema, {"value": deep})  # ten levels: as deep as real manifests
        assert not grammar_accepts(prepared.schema, {"value": [deep]})


def test_objects_without_or_with_some_properties_and_open_objects() -> None:
    check({"type": "object"}, {"anything": 1})
    p = check({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True},
              {"a": "x", "b": 2}, {"a": 1})
    assert "additionalProperties" in p.report.enforced
    check({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}},
          {"a": "x", "b": 2}, {"a": "x", "b": "y"})


def test_pattern_properties() -> None:
    raw = {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False}
    p = check(raw, {"x-a": 1}, {"y": 1})
    assert "patternProperties" in p.report.enforced


def test_all_of_is_merged() -> None:
    raw = {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}},
                     {"required": ["a"], "properties": {"b": {"type": "integer"}}}]}
    p = check(raw, {"a": "x", "b": 1}, {"b": 1})
    assert "allOf" not in str(p.schema)


def test_any_of_and_one_of() -> None:
    p = check({"oneOf": [{"type": "string"}, {"type": "integer"}]}, 3, [1])
    assert "oneOf" in p.report.validated  # exactly-one is checked after decoding
    check({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
           "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}, {"a": "x"}, {})


@pytest.mark.parametrize("keyword", [
    {"not": {"type": "string"}},
    {"if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["b"]}, "else": {}},
    {"dependentRequired": {"a": ["b"]}},
    {"dependencies": {"a": ["b"]}},
    {"uniqueItems": True},
    {"propertyNames": {"pattern": "^[a-z]+$"}},
])
def test_keywords_a_grammar_cannot_express_are_validated_not_refused(keyword: dict[str, Any]) -> None:
    raw = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, **keyword}
    p = prepare_schema(raw)
    assert set(keyword) & set(p.report.validated)
    for k in keyword:
        assert k not in p.schema


def test_min_max_properties_and_multiple_of_are_enforced() -> None:
    p = check({"type": "object", "additionalProperties": {"type": "integer", "multipleOf": 3},
               "minProperties": 1, "maxProperties": 2}, {"a": 3}, {})
    assert {"minProperties", "maxProperties", "multipleOf"} <= set(p.report.enforced)
    p = prepare_schema({"type": "number", "multipleOf": 0.01})
    assert "multipleOf" in p.report.validated


def test_keywords_beside_a_ref_are_merged() -> None:
    raw = {"$defs": {"A": {"type": "object", "properties": {"x": {"type": "string"}}}},
           "type": "object", "properties": {"a": {"$ref": "#/$defs/A", "required": ["x"], "description": "an A"}}}
    check(raw, {"a": {"x": "1"}}, {"a": {}})


def test_definitions_and_id_based_refs() -> None:
    raw = {"$id": "https://example.com/root.json", "definitions": {
        "b": {"$id": "b.json", "type": "string", "minLength": 1}},
        "type": "object", "properties": {"a": {"$ref": "#/definitions/b"}, "c": {"$ref": "b.json"}}}
    check(raw, {"a": "x", "c": "y"}, {"a": ""})


def test_recursion_is_unrolled_to_a_bound() -> None:
    raw = {"$defs": {"N": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/N"}}}}},
           "$ref": "#/$defs/N"}
    p = check(raw, {"kids": [{"kids": []}]})
    assert any("recursive" in note for note in p.report.notes)
    deep: dict[str, Any] = {}
    for _ in range(6):
        deep = {"kids": [deep]}
    assert original_accepts(raw, deep) and not grammar_accepts(p.schema, deep)


@pytest.mark.parametrize(("fmt", "enforced"), [("date", True), ("date-time", True), ("email", True),
                                               ("uuid", True), ("ipv4", True), ("uri", True),
                                               ("regex", False), ("idn-hostname", False)])
def test_formats_enforced_where_a_grammar_can(fmt: str, enforced: bool) -> None:
    p = prepare_schema({"type": "string", "format": fmt})
    assert (f"format:{fmt}" in p.report.enforced) is enforced
    assert (f"format:{fmt}" in p.report.validated) is not enforced


def test_annotations_are_ignored_never_refused() -> None:
    raw = {"type": "object", "title": "T", "id": "x", "$comment": "c", "x-vendor": 1, "examples": [{}],
           "properties": {"a": {"type": "string", "readOnly": True, "links": [], "foo": "bar"}}}
    p = prepare_schema(raw)
    assert {"title", "id", "$comment", "x-vendor", "examples", "readOnly", "links", "foo"} <= set(p.report.ignored)
    assert "title" not in str(p.schema) and "x-vendor" not in str(p.schema)


def test_optional_properties_are_not_made_nullable() -> None:
    p = prepare_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    assert not grammar_accepts(p.schema, {"a": None})
    assert grammar_accepts(p.schema, {})


def test_strict_mode_requires_every_property_and_finish_drops_the_added_nulls() -> None:
    raw = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": ["string", "null"]}},
           "required": []}
    p = prepare_schema(raw, strict=True)
    assert p.schema["required"] == ["a", "b"] and p.schema["additionalProperties"] is False
    assert grammar_accepts(p.schema, {"a": None, "b": None})
    record = p.finish({"a": None, "b": None})
    assert record == {"b": None} and original_accepts(raw, record)


@pytest.mark.parametrize(("raw", "path"), [
    (False, "$"),
    ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "$.properties.a"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "$"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "$"),
    ({"enum": [1, 2], "type": "string"}, "$.enum"),
])
def test_unsatisfiable_schemas_are_refused_with_the_path(raw: Any, path: str) -> None:
    with pytest.raises(SchemaRefused) as info:
        prepare_schema(raw)
    assert info.value.path.startswith(path)
    assert info.value.hint


@pytest.mark.parametrize(("raw", "reason"), [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(a+)+b"}}}, "nested quantifier"),
    ({"type": "object", "properties": {"a": {"enum": list(range(5000))}}}, "more than the limit of 1024"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(300)}}, "more than 256"),
    ({"type": "object", "properties": {"a": {"type": "stsring"}}}, "unknown type"),
    ({"type": "object", "properties": {"a": {"$ref": "https://evil.example/s.json"}}}, "only local refs"),
])
def test_hostile_limits_still_hold(raw: Any, reason: str) -> None:
    with pytest.raises(SchemaRefused, match=reason):
        prepare_schema(raw)


def test_lookaround_patterns_are_validated_not_refused() -> None:
    p = prepare_schema({"type": "string", "pattern": "^(?!x).*$"})
    assert "pattern" in p.report.validated and "pattern" not in p.schema["properties"]["value"]
