"""Raw-schema tasks end to end (issue 12): each shape real schemas have runs through an
`Extractor` with a `ScriptedEngine` writing what the grammar would write, and the returned record
validates against the user's ORIGINAL schema; a record that breaks a keyword the grammar only
validates is fed back and retried; llguidance compiles each grammar schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from extractor import ExtractionFailed, Extractor, ScriptedEngine, task_from_json_schema
from extractor.contracts.contract import validate_only
from extractor.engines.grammar_backends import llguidance_error
from extractor.pipeline.prompt import system_prompt

DOC = "Write one realistic example record that follows the schema."

#: (shape, schema, the answer as the grammar writes it, the record returned)
SHAPES: list[tuple[str, Any, Any, Any]] = [
    ("array root", {"type": "array", "items": {"type": "integer"}, "minItems": 1}, {"value": [1, 2]}, [1, 2]),
    ("string root", {"type": "string", "format": "date"}, {"value": "2024-01-31"}, "2024-01-31"),
    ("enum root", {"enum": ["a", "b"]}, {"value": "b"}, "b"),
    ("number root", {"type": "number", "minimum": 0}, {"value": 3.5}, 3.5),
    ("empty schema", {}, {"value": {"any": [1, "x"]}}, {"any": [1, "x"]}),
    ("true schema", True, {"value": 7}, 7),
    ("object without properties", {"type": "object"}, {"k": "v"}, {"k": "v"}),
    ("some properties, additionalProperties left out: the declared ones written",
     {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, {"a": "x"}, {"a": "x"}),
    ("some properties, additionalProperties true: open",
     {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": True},
     {"a": "x", "extra": 1}, {"a": "x", "extra": 1}),
    ("additionalProperties schema", {"type": "object", "additionalProperties": {"type": "integer"}},
     {"x": 1, "y": 2}, {"x": 1, "y": 2}),
    ("patternProperties", {"type": "object", "patternProperties": {"^s_": {"type": "string"}},
                           "additionalProperties": False}, {"s_a": "x"}, {"s_a": "x"}),
    ("allOf", {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                         {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]},
     {"a": "x", "b": 1}, {"a": "x", "b": 1}),
    ("anyOf", {"type": "object", "properties": {"v": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
               "required": ["v"]}, {"v": 4}, {"v": 4}),
    ("oneOf", {"type": "object", "properties": {"v": {"oneOf": [{"type": "string"}, {"type": "boolean"}]}},
               "required": ["v"]}, {"v": True}, {"v": True}),
    ("not", {"type": "object", "properties": {"v": {"type": "string", "not": {"const": "no"}}}, "required": ["v"]},
     {"v": "yes"}, {"v": "yes"}),
    ("if/then/else", {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"}},
                      "required": ["kind"], "if": {"properties": {"kind": {"const": "a"}}},
                      "then": {"required": ["n"]}}, {"kind": "a", "n": 1}, {"kind": "a", "n": 1}),
    ("dependentRequired", {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                           "dependentRequired": {"a": ["b"]}}, {"a": "x", "b": "y"}, {"a": "x", "b": "y"}),
    ("dependencies (draft 7)", {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                                "dependencies": {"a": ["b"]}}, {"a": "x", "b": "y"}, {"a": "x", "b": "y"}),
    ("min/maxProperties", {"type": "object", "minProperties": 1, "maxProperties": 2}, {"a": 1}, {"a": 1}),
    ("uniqueItems", {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
     {"value": ["a", "b"]}, ["a", "b"]),
    ("multipleOf", {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 5}}, "required": ["n"]},
     {"n": 10}, {"n": 10}),
    ("keywords beside $ref", {"$defs": {"S": {"type": "string"}}, "type": "object",
                              "properties": {"s": {"$ref": "#/$defs/S", "maxLength": 5}}, "required": ["s"]},
     {"s": "abc"}, {"s": "abc"}),
    ("definitions and $id refs", {"$id": "https://example.com/root.json", "definitions": {
        "N": {"$id": "n.json", "type": "integer"}}, "type": "object",
        "properties": {"a": {"$ref": "n.json"}, "b": {"$ref": "#/definitions/N"}}, "required": ["a", "b"]},
     {"a": 1, "b": 2}, {"a": 1, "b": 2}),
    ("recursion", {"$defs": {"T": {"type": "object", "properties": {"name": {"type": "string"}, "kids": {
        "type": "array", "items": {"$ref": "#/$defs/T"}}}, "required": ["name"]}}, "$ref": "#/$defs/T"},
     {"name": "r", "kids": [{"name": "k"}]}, {"name": "r", "kids": [{"name": "k"}]}),
    ("formats", {"type": "object", "properties": {f: {"type": "string", "format": f} for f in (
        "date", "time", "date-time", "email", "uuid", "ipv4", "ipv6", "uri")}},
     {"date": "2024-01-31", "email": "a@b.co", "uuid": "123e4567-e89b-12d3-a456-426614174000", "ipv4": "10.0.0.1"},
     {"date": "2024-01-31", "email": "a@b.co", "uuid": "123e4567-e89b-12d3-a456-426614174000", "ipv4": "10.0.0.1"}),
    ("annotations", {"type": "object", "title": "T", "id": "x", "$comment": "c", "x-kubernetes-group": "g",
                     "links": [], "readonly": True, "properties": {"a": {"type": "string", "examples": ["e"]}}},
     {"a": "x"}, {"a": "x"}),
]


def original_valid(schema: Any, value: Any) -> bool:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return bool(cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(value))


@pytest.mark.parametrize(("shape", "schema", "written", "record"), SHAPES, ids=[s for s, *_ in SHAPES])
def test_each_shape_returns_a_record_valid_against_the_original_schema(shape: str, schema: Any, written: Any,
                                                                       record: Any) -> None:
    task = task_from_json_schema(schema, name="raw")
    assert jsonschema.Draft202012Validator(task.strict_schema).is_valid(written)  # the grammar schema takes it
    assert llguidance_error(task.strict_schema) is None
    engine = ScriptedEngine([json.dumps(written)])
    result = Extractor(engine).run(task, DOC)
    assert result.data == record
    assert original_valid(schema, result.data)


@pytest.mark.parametrize(("schema", "bad", "good", "keyword"), [
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, {"value": ["a", "a"]},
     {"value": ["a", "b"]}, "uniqueItems"),
    ({"type": "object", "properties": {"v": {"type": "string", "not": {"const": "no"}}}, "required": ["v"]},
     {"v": "no"}, {"v": "yes"}, "not"),
    ({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
      "dependentRequired": {"a": ["b"]}}, {"a": "x"}, {"a": "x", "b": "y"}, "dependentRequired"),
])
def test_a_keyword_only_validated_is_fed_back_and_retried(schema: Any, bad: Any, good: Any, keyword: str) -> None:
    task = task_from_json_schema(schema, name="raw")
    assert task.report is not None and keyword in task.report.validated
    engine = ScriptedEngine([json.dumps(bad), json.dumps(good)])
    result = Extractor(engine).run(task, DOC)
    assert result.meta.attempts == 2 and original_valid(schema, result.data)
    assert "feedback" in json.dumps(engine.requests[1].messages).lower() or len(engine.requests[1].messages) > 2


def test_a_record_that_never_fits_the_original_schema_fails() -> None:
    schema = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    engine = ScriptedEngine([json.dumps({"value": ["a", "a"]})] * 3)
    with pytest.raises(ExtractionFailed, match="non-unique"):
        Extractor(engine).run(task_from_json_schema(schema, name="raw"), DOC, max_retries=2)


def test_optional_properties_may_be_omitted_and_get_no_added_null() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]}
    task = task_from_json_schema(schema, name="raw")
    assert task.strict_schema["required"] == ["a"]
    assert not jsonschema.Draft202012Validator(task.strict_schema).is_valid({"a": "x", "b": None})


def test_strict_mode_writes_every_property_and_drops_the_added_nulls() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"],
              "x-strict": True}
    task = task_from_json_schema(schema, name="raw")
    assert task.strict_schema["required"] == ["a", "b"] and task.strict_schema["additionalProperties"] is False
    result = Extractor(ScriptedEngine([json.dumps({"a": "x", "b": None})])).run(task, DOC)
    assert result.data == {"a": "x"} and original_valid(schema, result.data)


def test_the_validate_only_grammar_still_returns_records_valid_against_the_original() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "maxItems": 2}
    task = validate_only(task_from_json_schema(schema, name="raw"))
    loose = jsonschema.Draft202012Validator(task.strict_schema)
    assert loose.is_valid({"value": [1, 2, 3]}) and not loose.is_valid({"value": ["x"]})  # the shape, not the bound
    engine = ScriptedEngine([json.dumps({"value": [1, 2, 3]}), json.dumps({"value": [1, 2]})])
    result = Extractor(engine).run(task, DOC)
    assert result.data == [1, 2] and result.meta.attempts == 2
    assert engine.requests[1].messages[-1]["content"].count("[1, 2, 3] is too long") == 1


def test_the_validate_only_grammar_keeps_the_schemas_skeleton() -> None:
    """On the H200 most validate-only answers to the real-world schemas missed a required property
    or wrote one the schema closes out: the skeleton keeps properties, required, closed objects,
    scalar types and small enums (a few levels deep), and leaves patterns, bounds and cycles to
    validation."""
    schema = {
        "type": "object", "additionalProperties": False, "required": ["kind", "spec"],
        "properties": {
            "kind": {"enum": ["Pod", "Service"]},
            "name": {"type": "string", "pattern": "^[a-z]+\\d$", "maxLength": 5},
            "spec": {"$ref": "#/definitions/node"},
        },
        "definitions": {"node": {"type": "object", "required": ["id"],
                                 "properties": {"id": {"type": "integer"}, "next": {"$ref": "#/definitions/node"}}}},
    }
    loose = validate_only(task_from_json_schema(schema, name="raw")).strict_schema
    check = jsonschema.Draft202012Validator(loose)
    assert check.is_valid({"kind": "Pod", "spec": {"id": 1, "next": {"id": 2, "next": {"anything": [1]}}}})
    assert check.is_valid({"kind": "Pod", "name": "bbbbbbbbbb", "spec": {"id": 1}})  # pattern and bound validated later
    for wrong in ({"spec": {"id": 1}}, {"kind": "Job", "spec": {"id": 1}}, {"kind": "Pod", "spec": {"id": "x"}},
                  {"kind": "Pod", "spec": {"id": 1}, "extra": 1}):
        assert not check.is_valid(wrong), wrong
    assert len(json.dumps(loose)) < 10_000


def test_the_skeleton_closes_open_objects_whose_properties_hold_what_they_require() -> None:
    """An open object costs xgrammar about 4 ms per property to compile: the skeleton of the
    Washington Post's wp_4 (790 properties, open) took 3.8 s here, timed out in the compile guard
    on the H200, and its `version` const was lost with it. The skeleton closes an object whose
    properties hold all it requires (it may refuse what the schema allows, validated anyway);
    a required name it does not declare keeps it open. A skeleton's skeleton is itself."""
    schema = {"type": "object", "additionalProperties": True, "required": ["version", "body"],
              "properties": {"version": {"enum": ["0.10.9"]}, "body": {
                  "type": "object", "additionalProperties": True, "required": ["x-extra"],
                  "properties": {"a": {"type": "string"}}}}}
    task = validate_only(task_from_json_schema(schema, name="raw"))
    loose = task.strict_schema
    assert loose["additionalProperties"] is False and loose["properties"]["version"] == {"enum": ["0.10.9"]}
    check = jsonschema.Draft202012Validator(loose)
    assert check.is_valid({"version": "0.10.9", "body": {"x-extra": 1}})  # a required name stays writable
    assert not check.is_valid({"version": "0.10.9", "body": {"x-extra": 1}, "other": 1})
    assert not check.is_valid({"version": "0.10.8", "body": {"x-extra": 1}})
    defs: dict[str, Any] = {"l0": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(40)}}}
    for level in range(4):  # 8^4 leaves inlined: the skeleton is taken from the raw schema, undeclared names and all
        defs[f"l{level + 1}"] = {"type": "object", "properties": {
            f"k{j}": {"$ref": f"#/definitions/l{level}"} for j in range(8)}}
    big = task_from_json_schema({"type": "object", "definitions": defs, "required": ["top", "x-extra"],
                                 "properties": {"top": {"$ref": "#/definitions/l4"}}}, name="big")
    assert big.prepared is not None and big.prepared.skeleton_only
    assert big.strict_schema["additionalProperties"] not in (False, None)  # `x-extra` must be writable
    assert big.strict_schema["properties"]["top"]["additionalProperties"] is False
    from extractor.contracts.prepare import loose_schema
    assert task.prepared is not None
    again = loose_schema(task.prepared.__class__(**{**task.prepared.__dict__, "schema": loose}))
    assert again == loose


def test_a_grammar_too_slow_to_compile_falls_back_to_a_skeleton_that_keeps_its_leaves() -> None:
    """On the H200, 12 real-world schemas whose grammar timed out failed three times on one
    pattern (`base_path`: "^/...") that their skeleton had dropped: after a time-out the skeleton
    keeps each string's pattern and format (not lengths: slow to compile in vLLM's xgrammar);
    after a refusal (a pattern may be why) neither."""
    from extractor.errors import GrammarTimeout, SchemaRejected

    schema = {"type": "object", "required": ["base_path", "n"], "additionalProperties": False,
              "properties": {"base_path": {"type": "string", "pattern": "^/[a-z]+$", "maxLength": 20},
                             "n": {"type": "integer", "minimum": 1}, "when": {"type": "string", "format": "date"}}}
    task = task_from_json_schema(schema, name="raw")
    engine = ScriptedEngine([GrammarTimeout("$", "past 5 s"), '{"base_path": "/a", "n": 1}'])
    assert Extractor(engine).run(task, DOC).meta.grammar == "validate-only:compile_timeout"
    leaves = engine.requests[1].schema["properties"]
    assert leaves["base_path"] == {"type": "string", "pattern": "^/[a-z]+$"}
    assert leaves["n"] == {"type": "integer"} and leaves["when"]["format"] == "date"
    engine = ScriptedEngine([SchemaRejected("$", "bad pattern"), '{"base_path": "/a", "n": 1}'])
    assert Extractor(engine).run(task, DOC).meta.grammar == "validate-only:refused"
    assert engine.requests[1].schema["properties"]["base_path"] == {"type": "string"}


def test_a_skeleton_whose_leaves_fail_too_gives_way_to_the_bare_skeleton() -> None:
    """The skeleton with its leaves is checked like any schema (its patterns were never compiled
    on their own): refused or past the limit, the next attempt carries the bare skeleton."""
    from extractor.errors import GrammarTimeout, SchemaRejected

    schema = {"type": "object", "required": ["base_path"], "additionalProperties": False,
              "properties": {"base_path": {"type": "string", "pattern": "^/[a-z]+$", "maxLength": 20}}}
    task = task_from_json_schema(schema, name="raw")
    engine = ScriptedEngine([GrammarTimeout("$", "past 5 s"), SchemaRejected("$", "bad pattern"),
                             '{"base_path": "/a"}'])
    result = Extractor(engine).run(task, DOC)
    assert result.data == {"base_path": "/a"} and result.meta.attempts == 1
    assert [r.schema["properties"]["base_path"] for r in engine.requests] == [
        task.strict_schema["properties"]["base_path"], {"type": "string", "pattern": "^/[a-z]+$"}, {"type": "string"}]


def test_a_grammar_the_engine_refuses_falls_back_to_the_skeleton_and_is_still_validated() -> None:
    """vLLM's grammar backend refused 13 real-world schemas that our xgrammar compiled ("Ref
    recusion limit reached", "Unsupported JSON Schema structure false"): the attempt is not
    counted, the next request carries the schema's skeleton, and the answer is validated against
    the original schema, its error fed back like any other."""
    from extractor.errors import SchemaRejected

    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 7}}, "required": ["n"],
              "additionalProperties": False}
    task = task_from_json_schema(schema, name="raw")
    engine = ScriptedEngine([SchemaRejected("$", "Ref recusion limit reached: 3"), '{"n": 3}', '{"n": 14}'])
    result = Extractor(engine).run(task, DOC)
    assert result.data == {"n": 14} and result.meta.attempts == 2
    assert result.meta.grammar == "validate-only:refused" and result.meta.to_dict()["grammar"] == result.meta.grammar
    assert engine.requests[0].schema == task.strict_schema
    assert engine.requests[1].schema == engine.requests[2].schema == validate_only(task).strict_schema
    assert "3 is not a multiple of 7" in engine.requests[2].messages[-1]["content"]


def test_a_grammar_past_its_compile_limit_falls_back_too_unless_the_option_is_off() -> None:
    from extractor.errors import GrammarTimeout, SchemaRejected

    task = task_from_json_schema({"type": "object", "properties": {"a": {"type": "string"}}}, name="raw")
    result = Extractor(ScriptedEngine([GrammarTimeout("$", "past 5 s"), '{"a": "x"}'])).run(task, DOC)
    assert result.data == {"a": "x"} and result.meta.grammar == "validate-only:compile_timeout"
    assert "grammar" not in Extractor(ScriptedEngine(['{"a": "x"}'])).run(task, DOC).meta.to_dict()
    with pytest.raises(SchemaRejected, match="recusion"):
        Extractor(ScriptedEngine([SchemaRejected("$", "recusion")]), grammar_fallback=False).run(task, DOC)
    # a skeleton refused as well: the refusal stands (no loop)
    with pytest.raises(SchemaRejected):
        Extractor(ScriptedEngine([SchemaRejected("$", "no"), SchemaRejected("$", "no")])).run(task, DOC)


def test_a_pydantic_contract_is_never_loosened() -> None:
    from extractor.errors import SchemaRejected
    from schemas import Person

    engine = ScriptedEngine(lambda request: SchemaRejected("$", "no"))
    with pytest.raises(SchemaRejected):
        Extractor(engine).extract(Person, "Ann, 3, Oslo")
    # the grounded schema, then the contract's own: no third, looser request
    assert len(engine.requests) == 2 and engine.requests[0].schema != engine.requests[1].schema


def test_a_schema_too_large_with_its_refs_inlined_gets_the_skeleton_not_a_refusal() -> None:
    """The Washington Post's and SARIF's schemas are 2.8 to 21 MB with their shared definitions
    inlined: taken with the skeleton as the grammar, validated against the schema itself."""
    leaf = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(40)}}
    defs = {"leaf": leaf}
    for level in range(6):  # each level refers to the one below from 8 places: 8^6 leaves inlined
        defs[f"l{level + 1}"] = {"type": "object", "properties": {
            f"k{j}": {"$ref": f"#/definitions/{'leaf' if level == 0 else f'l{level}'}"} for j in range(8)}}
    schema = {"type": "object", "definitions": defs, "required": ["top"],
              "properties": {"top": {"$ref": "#/definitions/l6"}, "id": {"type": "integer"}}}
    task = task_from_json_schema(schema, name="big")
    assert any("validate-only grammar" in note for note in task.prepared.report.notes)  # type: ignore[union-attr]
    assert task.prepared.skeleton_only  # type: ignore[union-attr]
    assert len(json.dumps(task.strict_schema)) < 100_000
    result = Extractor(ScriptedEngine(['{"top": {"k0": {}}, "id": 3}'])).run(task, DOC)
    assert result.data == {"top": {"k0": {}}, "id": 3} and original_valid(schema, result.data)


def test_an_object_that_leaves_additional_properties_out_is_closed_in_the_grammar_only() -> None:
    """SmolLM2 under an open object wrote key after key until max_tokens (real-world schemas of
    one or two properties, cut at 64, 128 and 256 tokens): where the schema declares properties
    and leaves `additionalProperties` out, the grammar writes only those; the record is valid
    against the open original. Explicit `true`, a schema, `patternProperties`, or a required key
    that is not declared keep the object open."""
    def grammar(schema: Any) -> Any:
        return task_from_json_schema(schema, name="raw").strict_schema

    closed = grammar({"type": "object", "properties": {"v": {"const": "1.0.0"}}, "required": ["v"]})
    assert closed["additionalProperties"] is False and "x-open-by-default" not in json.dumps(closed)
    contract = task_from_json_schema({"type": "object", "properties": {"v": {"const": "1.0.0"}}, "required": ["v"]},
                                     name="raw", close_declared=False).strict_schema  # the contract's grammar
    assert contract["additionalProperties"] not in (False, None) and "x-open-by-default" not in json.dumps(contract)
    nested = grammar({"type": "array", "items": {"properties": {"a": {"type": "integer"}}}})
    assert nested["properties"]["value"]["items"]["additionalProperties"] is False
    for still_open in ({"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
                       {"type": "object", "properties": {"a": {}}, "patternProperties": {"^x": {}}},
                       {"type": "object", "properties": {"a": {}}, "minProperties": 2},
                       {"type": "object"}):
        assert grammar(still_open).get("additionalProperties") is not False, still_open
        assert "x-open-by-default" not in json.dumps(grammar(still_open))


def test_the_skeleton_keeps_a_choice_of_shapes_and_a_node_its_own_shape_beside_its_choices() -> None:
    """The Washington Post's schemas: a closed object of 50 properties whose `oneOf` only requires
    one of two of them. Its skeleton was any JSON object (SmolLM2 wrote `{"type": "record", "data":
    ...}`); it keeps the object's own shape, the choice left to validation. A choice between
    shapes becomes a choice between their skeletons."""
    schema = {"type": "object", "additionalProperties": False, "required": ["kind"],
              "properties": {"kind": {"enum": ["audio"]}, "streams": {"type": "array"}, "source_url": {"type": "string"}},
              "oneOf": [{"required": ["streams"]}, {"required": ["source_url"]}]}
    loose = validate_only(task_from_json_schema(schema, name="raw")).strict_schema
    check = jsonschema.Draft202012Validator(loose)
    assert check.is_valid({"kind": "audio", "source_url": "x"}) and not check.is_valid({"kind": "audio", "data": 1})
    choice = {"type": "object", "required": ["v"], "additionalProperties": False, "properties": {"v": {"anyOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False},
        {"type": "string", "pattern": "^x"}, {"type": "null"}]}}}
    check = jsonschema.Draft202012Validator(validate_only(task_from_json_schema(choice, name="raw")).strict_schema)
    assert all(check.is_valid({"v": v}) for v in ({"a": 1}, "y", None))  # the pattern is left to validation
    assert not any(check.is_valid({"v": v}) for v in ({"b": 1}, 3, [1]))


class _SmallContext(ScriptedEngine):
    """A scripted engine with a context of 2,048 tokens (a token per 2 characters) that times out
    the compile of any schema it was not given to admit, as the vLLM engines' guard did on the H200."""

    context_length = 2048

    def __init__(self, outputs: Any) -> None:
        super().__init__(outputs)
        self.admitted: list[Any] = []

    def count_prompt_tokens(self, messages: Any) -> int:
        return sum(len(m["content"]) for m in messages) // 2

    def admit(self, schema: Any) -> bool:
        self.admitted.append(schema)
        return True

    async def prepare(self, schema: Any) -> None:
        from extractor.errors import GrammarTimeout

        if schema not in self.admitted:
            raise GrammarTimeout("$", "past 5 s")

    async def generate(self, requests: Any) -> Any:
        for r in requests:
            await self.prepare(r.schema)
        return await super().generate(requests)


def test_a_short_document_under_a_schema_with_a_long_prompt_is_not_chunked_and_keeps_its_fallback() -> None:
    """On the H200, 16 real-world schemas (15 KB and more) made a one-line document's prompt too long
    for its output budget: it went to the long-document path, whose piece tasks lost the raw schema's
    fallback grammar, and the compile guard's time-out came back as the answer. Now the document
    is one piece, its budget fitted to the room left, the skeleton taken."""
    from extractor.engines.base import TokenBudget
    from extractor.longdoc.run import needs_chunks

    props = {f"field_{i}": {"type": "string", "description": "a field of the record " * 3} for i in range(40)}
    task = task_from_json_schema({"type": "object", "properties": props, "required": ["field_0"]}, name="wide")
    engine = _SmallContext(lambda request: '{"field_0": "x"}')
    assert isinstance(engine, TokenBudget)
    extractor = Extractor(engine)
    messages_chars = len(system_prompt(task))
    assert messages_chars // 2 + task.max_tokens > engine.context_length  # the whole would not fit
    assert not needs_chunks(engine, task, DOC, extractor.options)
    result = extractor.run(task, DOC)
    assert result.data == {"field_0": "x"} and result.meta.grammar == "validate-only:compile_timeout"
    assert all(engine.count_prompt_tokens(r.messages) + r.max_tokens <= engine.context_length for r in engine.requests)


def test_the_prompt_field_list_is_bounded() -> None:
    from extractor.pipeline.prompt import MAX_ENUM_SHOWN, MAX_FIELD_LIST_CHARS

    props = {f"f{i}": {"type": "string", "enum": [f"v{j}" for j in range(1000)], "description": "d" * 2000}
             for i in range(60)}
    task = task_from_json_schema({"type": "object", "properties": props}, name="huge")
    prompt = system_prompt(task)
    assert len(prompt) < MAX_FIELD_LIST_CHARS + 2000
    assert f'"v{MAX_ENUM_SHOWN - 1}" (and {1000 - MAX_ENUM_SHOWN} more)' in prompt
    assert "more fields (the output format gives them)" in prompt


class _Admitting(ScriptedEngine):
    """A scripted engine that takes schemas unchecked, as the vLLM engines' compile guard does."""

    def admit(self, schema: Any) -> bool:
        return True


def test_a_skeleton_that_times_out_too_is_admitted_again_once() -> None:
    """On the H200, 26 of 283 real-world schemas (BFCL's among them, that compile in milliseconds)
    came back as the guard's time-out: the verdict on the skeleton raced its admission. It is
    admitted once more; a third time-out stands."""
    from extractor.errors import GrammarTimeout

    task = task_from_json_schema({"type": "object", "properties": {"a": {"type": "string"}}}, name="raw")
    engine = _Admitting([GrammarTimeout("$", "past 5 s"), GrammarTimeout("$", "past 5 s"), '{"a": "x"}'])
    result = Extractor(engine).run(task, DOC)
    assert result.data == {"a": "x"} and result.meta.grammar == "validate-only:compile_timeout"
    assert result.meta.attempts == 1
    engine = _Admitting([GrammarTimeout("$", "past 5 s")] * 3 + ['{"a": "x"}'])
    with pytest.raises(GrammarTimeout):
        Extractor(engine).run(task, DOC)
