"""Patterns in the form xgrammar reads right (`engines/xgrammar_regex.py`): the rewrite keeps
the pattern's strings (checked with Python's `re`), and xgrammar itself then refuses what the
user's pattern refuses, in both the local engine's form and the vLLM engines' form."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import xgrammar as xgr

from extractor.engines.vllm_schema import for_vllm_uncached
from extractor.engines.xgrammar_regex import counted_optional_groups

#: Github_hard o21232 and 11 other real-world schemas (JSONSchemaBench dev set)
BASE_PATH = ("^/(([a-zA-Z0-9._~!$&'()*+,;=:@-]|%[0-9a-fA-F]{2})+"
             "(/([a-zA-Z0-9._~!$&'()*+,;=:@-]|%[0-9a-fA-F]{2})*)*)?$")


@pytest.mark.parametrize(("pattern", "counted"), [
    ("^c(ab*)?$", "^c(ab*){0,1}$"),
    ("(?:a+)?b", "(?:a+){0,1}b"),
    ("(a)??", "(a){0,1}?"),  # lazy: the same strings
    (r"\)?x", r"\)?x"),  # an escaped parenthesis
    ("[)?]", "[)?]"),  # a class
    ("[]?)]?(a)?", "[]?)]?(a){0,1}"),  # `]` first in a class is literal
    ("[^]a)]?(a)?", "[^]a)]?(a){0,1}"),
    ("a?b", "a?b"),  # a single character's `?` is read right
])
def test_optional_groups_become_counted(pattern: str, counted: str) -> None:
    assert counted_optional_groups(pattern) == counted


@pytest.mark.parametrize("pattern", [BASE_PATH, "^c(ab*)?$", "^(a|b+)?c$", "^x((a|b)+y*)?$", "[]?)]?(a+)?"])
def test_the_rewrite_keeps_the_same_strings(pattern: str) -> None:
    counted = counted_optional_groups(pattern)
    for n in range(5):
        for letters in itertools.product("abcxy/%)]?", repeat=n):
            text = "".join(letters)
            assert bool(re.search(pattern, text)) == bool(re.search(counted, text)), (pattern, text)


def _xgrammar_accepts(schema: dict[str, object], value: object) -> bool:
    grammar = xgr.Grammar.from_json_schema(json.dumps(schema), strict_mode=True)
    return bool(xgr.testing._is_grammar_accept_string(grammar, json.dumps(value)))


@pytest.mark.parametrize(("pattern", "bad", "good"), [
    ("^c(ab*)?$", "cb", "cabb"),
    (BASE_PATH, "//www.gov.uk/service-manual", "/government/organisations/hm-revenue-customs"),
])
def test_vllm_form_of_an_optional_group_is_read_right_by_xgrammar(pattern: str, bad: str, good: str) -> None:
    schema = {"type": "object", "properties": {"p": {"type": "string", "pattern": pattern}}, "required": ["p"]}
    assert _xgrammar_accepts(schema, {"p": bad}), "xgrammar fixed its optional groups: drop the rewrite?"
    form = dict(for_vllm_uncached(schema))
    assert form is not schema and schema["properties"]["p"]["pattern"] == pattern  # the original is kept
    assert not _xgrammar_accepts(form, {"p": bad})
    assert _xgrammar_accepts(form, {"p": good})
