"""The schema vLLM's engines send (`engines/vllm_schema.py`): vLLM's "auto" backend hands it to
xgrammar, never to outlines; what the grammar no longer says is still validated."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from extractor.engines.base import GenerationRequest
from extractor.engines.vllm_schema import (
    XGRAMMAR_FORMATS,
    GuardedSchemas,
    VllmSchemas,
    fold_pattern_properties,
    for_vllm_uncached,
)


def vllm_would_leave_xgrammar(schema: Any) -> bool:
    """vLLM 0.26's `has_xgrammar_unsupported_json_features`, written out (the vLLM test below
    checks the real one where vLLM is installed)."""
    formats = {"email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri",
               "uri-reference", "uri-template", "json-pointer", "relative-json-pointer"}

    def check(obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        if obj.get("type") in ("integer", "number") and "multipleOf" in obj:
            return True
        if obj.get("type") == "array" and any(k in obj for k in ("uniqueItems", "contains", "minContains", "maxContains")):
            return True
        if obj.get("type") == "string" and "format" in obj and obj["format"] not in formats:
            return True
        if obj.get("type") == "object" and any(k in obj for k in ("patternProperties", "propertyNames")):
            return True
        return any(check(v) for v in obj.values() if isinstance(v, dict)) or any(
            check(i) for v in obj.values() if isinstance(v, list) for i in v)

    return check(schema)


SENT_AWAY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "multipleOf": 5},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "size": {"type": "string", "format": "int64"},
        "when": {"type": "string", "format": "date"},
        "labels": {"type": "object", "patternProperties": {"^x-": {"type": "string"}},
                   "additionalProperties": False, "propertyNames": {"maxLength": 8}},
    },
    "required": ["count"],
    "additionalProperties": False,
}


def test_a_schema_vllm_would_send_away_comes_back_in_xgrammars_form() -> None:
    assert vllm_would_leave_xgrammar(SENT_AWAY)
    form = for_vllm_uncached(SENT_AWAY)
    assert not vllm_would_leave_xgrammar(form)
    props = form["properties"]
    assert props["count"] == {"type": "integer"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["size"] == {"type": "string"}
    assert props["when"] == {"type": "string", "format": "date"}  # a format xgrammar has stays
    assert props["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert SENT_AWAY["properties"]["count"] == {"type": "integer", "multipleOf": 5}  # the original is kept


def test_data_is_never_changed() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3,
                                                     "enum": [{"type": "integer", "multipleOf": 2}]}}}
    assert for_vllm_uncached(schema)["properties"]["n"] == {"type": "integer",
                                                            "enum": [{"type": "integer", "multipleOf": 2}]}


def test_a_schema_already_in_xgrammars_form_is_the_same_object() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "format": "email"}}}
    assert for_vllm_uncached(schema) is schema


@pytest.mark.parametrize(("node", "expected"), [
    ({"patternProperties": {"^a": {"type": "string"}, "^b": {"type": "integer"}}, "additionalProperties": False},
     {"anyOf": [{"type": "string"}, {"type": "integer"}]}),
    ({"patternProperties": {"^a": {"type": "string"}}, "additionalProperties": {"type": "null"}},
     {"anyOf": [{"type": "string"}, {"type": "null"}]}),
    ({"patternProperties": {"^a": {"type": "string"}}}, True),
    ({"patternProperties": {}, "additionalProperties": False}, False),
    # every key matches `.*` (WashingtonPost wp_65's dictionary of strings): `additionalProperties` never applies
    ({"patternProperties": {".*": {"type": "string"}}}, {"type": "string"}),
    ({"patternProperties": {"^.*$": {"type": "string"}}}, True),  # a key with a newline escapes `^.*$`
])
def test_pattern_properties_fold_into_additional_properties(node: dict[str, Any], expected: Any) -> None:
    fold_pattern_properties(node)
    assert "patternProperties" not in node
    assert node["additionalProperties"] == expected


def test_forms_are_kept_by_schema_object() -> None:
    forms = VllmSchemas(size=2)
    first = forms(SENT_AWAY)
    assert forms(SENT_AWAY) is first
    assert forms(first) is first  # vLLM's form of vLLM's form is itself


class _RecordingGuard:
    def __init__(self) -> None:
        self.checked: list[Any] = []
        self.admitted: list[Any] = []

    async def ready(self) -> None:
        return None

    async def check(self, schema: Any) -> None:
        self.checked.append(schema)

    def admit(self, schema: Any) -> None:
        self.admitted.append(schema)


def test_the_guard_checks_and_admits_the_form_vllm_gets() -> None:
    guard = _RecordingGuard()
    schemas = GuardedSchemas(guard)  # type: ignore[arg-type]
    request = GenerationRequest(messages=({"role": "user", "content": "a"},), schema=SENT_AWAY, max_tokens=8)
    sent = asyncio.run(schemas.requests([request, request]))
    assert len(guard.checked) == 1 and [r.schema for r in sent] == guard.checked * 2  # checked once, sent so
    assert not vllm_would_leave_xgrammar(guard.checked[0])
    schemas.admit(SENT_AWAY)
    assert guard.admitted == [guard.checked[0]]


def test_dev_schemas_never_leave_xgrammar(tmp_path: Any) -> None:
    """Every real-world schema of the development set, as the library compiles it, stays with
    xgrammar under vLLM's rule (52 went to outlines and 9 to llguidance before)."""
    from bench.shared_data import shared_data
    from extractor.contracts.contract import task_from_json_schema
    from extractor.errors import SchemaRejected

    data = shared_data("jsonschemabench-dev.jsonl")
    if not data.exists():
        pytest.skip("the shared real-world schemas are not on this machine")
    sent_away = 0
    for line in data.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        try:
            task = task_from_json_schema(row["schema"], name="x")
        except SchemaRejected:
            continue
        sent_away += vllm_would_leave_xgrammar(task.strict_schema)
        assert not vllm_would_leave_xgrammar(for_vllm_uncached(task.strict_schema)), row["id"]
    assert sent_away > 0  # the set has such schemas: the check above is not empty


@pytest.mark.vllm
def test_vllms_own_rule_keeps_the_form_with_xgrammar() -> None:
    backend = pytest.importorskip("vllm.v1.structured_output.backend_xgrammar")
    assert backend.has_xgrammar_unsupported_json_features(SENT_AWAY)
    assert not backend.has_xgrammar_unsupported_json_features(for_vllm_uncached(SENT_AWAY))
    assert XGRAMMAR_FORMATS <= set(backend.STRING_SUPPORTED_FORMATS)  # no format kept that vLLM sends away
