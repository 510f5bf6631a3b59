"""The schema compiler: strictness, refusals with paths, and property-based checks."""

from __future__ import annotations

import datetime as dt
import json
from enum import StrEnum
from typing import Any

import jsonschema
import pytest
import xgrammar as xgr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, create_model

from extractor import Limits, SchemaRejected, compile_strict_schema, task_from_json_schema, task_from_model
from schemas import BUILTIN


def objects(schema: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            found.append(schema)
        for v in schema.values():
            found.extend(objects(v))
    elif isinstance(schema, list):
        for v in schema:
            found.extend(objects(v))
    return found


def assert_strict(strict: dict[str, Any]) -> None:
    for obj in objects(strict):
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])


def grammar_compiles(strict: dict[str, Any]) -> None:
    xgr.Grammar.from_json_schema(json.dumps(strict), any_whitespace=False, strict_mode=True)


@pytest.mark.parametrize("model", BUILTIN, ids=lambda m: m.contract_name)
def test_builtin_schemas_compile_strictly(model: type[BaseModel]) -> None:
    task = task_from_model(model)
    assert_strict(task.strict_schema)
    grammar_compiles(task.strict_schema)
    for ex in task.examples:  # every few-shot record validates against its strict schema
        jsonschema.validate(ex.record, task.strict_schema)


def test_optional_fields_become_required_and_nullable_with_descriptions_kept() -> None:
    class M(BaseModel):
        a: int = Field(description="an a")
        b: str | None = Field(default=None, description="a b")
        c: str = "x"

    strict = compile_strict_schema(M.model_json_schema())
    assert strict["required"] == ["a", "b", "c"]
    assert strict["properties"]["a"] == {"type": "integer", "description": "an a"}
    assert strict["properties"]["c"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert strict["properties"]["b"]["description"] == "a b"
    assert "title" not in strict and "default" not in strict["properties"]["c"]


def test_raw_schema_optional_property_stays_optional_unless_strict() -> None:
    raw = json.loads(open("fixtures/schemas/contact.schema.json").read())
    task = task_from_json_schema(raw, name="contact")
    assert task.strict_schema["required"] == ["name"]  # fidelity: the user's schema lets phone be omitted
    strict = task_from_json_schema(raw, name="contact", strict=True)
    assert strict.strict_schema["required"] == ["name", "phone"]
    assert {"type": "null"} in strict.strict_schema["properties"]["phone"]["anyOf"]
    assert task.instructions == "Extract the contact's name and phone number."


@pytest.mark.parametrize(("schema", "path", "reason"), [
    ({"type": "object", "properties": {"name": {"type": "stsring"}}}, "$.properties.name.type", "unknown type"),
    ([1, 2], "$", "must be a JSON object"),
    ({"type": "string"}, "$", "root of a schema must be an object"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(a+)+b"}}},
     "$.properties.a.pattern", "nested quantifier"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "a\x00b"}}},
     "$.properties.a.pattern", "NUL"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(a"}}},
     "$.properties.a.pattern", "invalid regular expression"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "$.properties.a.not", "unsupported keyword"),
    ({"type": "object", "properties": {"a": {"enum": list(range(50_000))}}}, "$.properties.a.enum", "more than the limit"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}, "$.properties.a.$ref", "missing definition"),
    ({"type": "object", "properties": {"a": {"$ref": "https://x/y.json"}}}, "$.properties.a.$ref", "only local refs"),
    ({"type": "object", "properties": {"a": {}}}, "$.properties.a", "unconstrained"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "credit-card"}}},
     "$.properties.a.format", "not supported"),
    ({"type": "object", "properties": {"a": {"type": "array"}}}, "$.properties.a", "needs `items`"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True},
     "$.additionalProperties", "closed"),
])
def test_refusals_name_the_path_and_the_reason(schema: Any, path: str, reason: str) -> None:
    with pytest.raises(SchemaRejected) as info:
        compile_strict_schema(schema)
    assert info.value.path == path
    assert reason in info.value.reason


def test_depth_and_property_limits() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(20):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(SchemaRejected, match="nesting deeper than 12"):
        compile_strict_schema(deep)
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(300)}}
    with pytest.raises(SchemaRejected, match="more than 256 properties"):
        compile_strict_schema(wide)
    assert compile_strict_schema(wide, Limits(max_properties=400))["required"][-1] == "p299"
    with pytest.raises(SchemaRejected, match="bytes, more than the limit"):
        compile_strict_schema(wide, Limits(max_bytes=1000, max_properties=400))


def test_recursive_ref_is_refused() -> None:
    class Node(BaseModel):
        value: int
        children: list[Node]

    with pytest.raises(SchemaRejected, match="recursive"):
        compile_strict_schema(Node.model_json_schema())


# -- property-based ------------------------------------------------------------

class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


SCALARS: dict[Any, st.SearchStrategy[Any]] = {
    int: st.integers(-10**6, 10**6),
    float: st.floats(-1e6, 1e6, allow_nan=False),
    str: st.text(max_size=20),
    bool: st.booleans(),
    dt.date: st.dates(),
    Color: st.sampled_from(list(Color)),
}


@st.composite
def models_and_values(draw: st.DrawFn, depth: int = 0) -> tuple[type[BaseModel], dict[str, Any]]:
    n = draw(st.integers(1, 5))
    fields: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for i in range(n):
        kind = draw(st.sampled_from(["scalar", "optional", "list", "nested"] if depth < 2 else ["scalar", "optional"]))
        scalar = draw(st.sampled_from(list(SCALARS)))
        name = f"f{i}"
        if kind == "scalar":
            fields[name] = (scalar, ...)
            values[name] = draw(SCALARS[scalar])
        elif kind == "optional":
            fields[name] = (scalar | None, None)
            values[name] = draw(st.none() | SCALARS[scalar])
        elif kind == "list":
            fields[name] = (list[scalar], ...)  # type: ignore[valid-type]
            values[name] = draw(st.lists(SCALARS[scalar], max_size=3))
        else:
            sub_model, sub_values = draw(models_and_values(depth + 1))
            fields[name] = (sub_model, ...)
            values[name] = sub_values
    model = create_model(f"M{depth}_{draw(st.integers(0, 10**6))}", **fields)
    return model, values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models_and_values())
def test_strict_schema_accepts_what_the_model_accepts_and_compiles(mv: tuple[type[BaseModel], dict[str, Any]]) -> None:
    model, values = mv
    strict = compile_strict_schema(model.model_json_schema())
    assert_strict(strict)
    instance = model.model_validate(values)
    jsonschema.validate(instance.model_dump(mode="json"), strict)
    grammar_compiles(strict)


json_leaf = st.sampled_from([
    {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"},
    {"enum": ["a", "b"]}, {"type": "string", "format": "date"}, {"type": "string", "pattern": "^[a-z]+$"},
    {"type": "stsring"}, {"type": "string", "pattern": "(x*)*"}, {"type": "string", "format": "weird"},
])


def raw_schemas() -> st.SearchStrategy[Any]:
    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        props = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), children, min_size=1, max_size=4)
        return st.one_of(
            props.flatmap(lambda p: st.builds(
                lambda req: {"type": "object", "properties": p, "required": req},
                st.lists(st.sampled_from(sorted(p)), unique=True))),
            st.builds(lambda c: {"type": "array", "items": c}, children),
            st.builds(lambda a, b: {"anyOf": [a, b]}, children, children),
        )
    return st.recursive(json_leaf, extend, max_leaves=10)


@settings(max_examples=150, deadline=None)
@given(raw_schemas())
def test_raw_schemas_are_compiled_strictly_or_refused_with_a_path(schema: Any) -> None:
    try:
        strict = compile_strict_schema(schema)
    except SchemaRejected as exc:
        assert exc.path.startswith("$") and exc.reason
        return
    assert_strict(strict)
    grammar_compiles(strict)
