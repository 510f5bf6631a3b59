"""Spans and confidence end to end with the real local model (SmolLM2-135M) on a person fixture."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from extractor import Extractor, GenerationRequest, task_from_model
from extractor.pipeline.prompt import build_messages
from schemas import Person
from tests.conftest import FIXTURES

pytestmark = pytest.mark.model
PERSON = task_from_model(Person)


def test_local_engine_spans_point_at_the_values_and_confidence_is_a_probability(local_engine: Any) -> None:
    text = (FIXTURES / "person" / "alice.txt").read_text()
    result = Extractor(local_engine, spans=True, confidence=True, require_grounded=True).run(Person, text)
    person = result.data
    assert (person.name, person.age, person.city) == ("Alice Smith", 34, "Lisbon")
    spans = result.meta.spans
    assert spans is not None
    for path, value in (("name", "Alice Smith"), ("age", "34"), ("city", "Lisbon")):
        assert spans[path], path
        assert all(text[s.start:s.end] == value and s.match == "exact" for s in spans[path]), spans[path]
    confidence = result.meta.confidence
    assert confidence is not None and set(confidence) == {"name", "age", "city", "email"}
    assert all(0 < p <= 1 for p in confidence.values()), confidence


def test_local_engine_token_texts_add_up_to_the_output(local_engine: Any) -> None:
    """Each token's text is what it adds to the output (even for a name split over byte tokens),
    so confidence attributes tokens to the right characters."""
    doc = "José Müller-Ørsted is 52 years old and lives in Zürich."
    request = GenerationRequest(messages=build_messages(PERSON, doc), schema=PERSON.strict_schema,
                                max_tokens=PERSON.max_tokens, logprobs=True)
    (result,) = asyncio.run(local_engine.generate([request]))
    assert result.logprobs is not None and len(result.logprobs) == result.completion_tokens
    assert "".join(t.token for t in result.logprobs) == result.text
    assert all(t.logprob <= 0 for t in result.logprobs)
