"""The two grammar backends on prepared schemas, without a model: what each accepts and refuses
(the conformance `bench/schema_coverage.py` measures on JSONSchemaBench, here on small schemas
written for the test). Needs the SmolLM2 tokenizer that `extract run` converts once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extractor.contracts.prepare import prepare_schema
from extractor.engines.grammar_backends import BACKENDS, GrammarBackends, search_pattern


@pytest.fixture(scope="module")
def backends() -> GrammarBackends:
    return GrammarBackends()


def accepted(backends: GrammarBackends, raw: dict[str, Any], value: Any) -> dict[str, bool]:
    prepared = prepare_schema(raw)
    text = backends.dumps(prepared.wrap(value))
    return {b: backends.accepts(backends.compile(prepared.schema, b), text) for b in BACKENDS}


@pytest.mark.parametrize(("pattern", "whole"), [
    ("^a$", "a"), ("abc", ".*abc.*"), (r"\.[a-z]{2,3}$", r".*\.[a-z]{2,3}"), ("^a|b$", "(a.*)|(.*b)"),
    (r"x\$", r".*x\$.*"), ("^$", ""), ("(a|b)", ".*(a|b).*"), ("^[|]x", "[|]x.*"),
])
def test_a_json_schema_pattern_is_a_search_and_becomes_a_whole_string_regex(pattern: str, whole: str) -> None:
    assert search_pattern(pattern) == whole


@pytest.mark.parametrize(("pattern", "good", "bad"), [
    (r"\.[a-zA-Z]{2,3}$", "example.com", "example.comx"),  # JSONSchemaBench Github_easy o68324
    ("data:image/png;base64,", "data:image/png;base64,iVBORw0KGgo", "data:image/gif;base64,R0lG"),
    ("^[a-z]+$", "abc", "ab1"),
    # Github_hard o21232's base_path: xgrammar misreads an optional group ending in a repetition
    ("^/(([a-z0-9._~-]|%[0-9a-fA-F]{2})+(/([a-z0-9._~-]|%[0-9a-fA-F]{2})*)*)?$", "/gov/hmrc/", "//www.gov.uk/a"),
])
def test_unanchored_patterns_match_anywhere_on_both_backends(backends: GrammarBackends, pattern: str, good: str,
                                                             bad: str) -> None:
    raw = {"type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}, "required": ["s"]}
    assert accepted(backends, raw, {"s": good}) == {"xgrammar": True, "llguidance": True}
    assert accepted(backends, raw, {"s": bad}) == {"xgrammar": False, "llguidance": False}


def test_open_objects_take_values_nested_as_deep_as_real_manifests(backends: GrammarBackends) -> None:
    """A Kubernetes ReplicaSetSpec given a whole ReplicaSet: the extra keys are any JSON, and
    `spec.template.metadata.labels` nests five levels down (the bound was 3: refused)."""
    raw = {"type": "object", "properties": {"replicas": {"type": "integer"}}, "additionalProperties": True}
    manifest = {"replicas": 3, "spec": {"template": {"metadata": {"labels": {"app": "example"}}}},
                "deep": [[[[[[[[["nine"]]]]]]]]]}
    assert accepted(backends, raw, manifest) == {"xgrammar": True, "llguidance": True}
    too_deep: Any = "x"
    for _ in range(12):
        too_deep = [too_deep]
    assert accepted(backends, raw, {"deep": too_deep}) == {"xgrammar": False, "llguidance": False}


def test_the_any_value_definition_grows_with_its_bound_not_twice_per_level() -> None:
    prepared = prepare_schema({"type": "object", "properties": {"x": {}}})
    defs = prepared.schema["$defs"]
    assert sorted(defs) == sorted(["any_json", *(f"any_json_{i}" for i in range(1, 11))])
    assert len(json.dumps(defs)) < 4000
