"""Spans, confidence and `require_grounded` through the extraction loop, on the scripted engine."""

from __future__ import annotations

import json
import math

import pytest

from extractor import ExtractionFailed, Extractor, GenerationRequest, GenerationResult, ScriptedEngine
from extractor.engines.base import TokenLogprob
from extractor.grounding.spans import Span
from schemas import Invoice, Person

DOC = "Alice Smith is 34 years old and lives in Lisbon."
GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
INVENTED = '{"name":"Maria Garcia","age":34,"city":"Lisbon","email":null}'


def with_logprobs(text: str, pieces: list[str], logprob: float = -0.1) -> GenerationResult:
    assert "".join(pieces) == text
    return GenerationResult(text, "stop", 10, len(pieces), tuple(TokenLogprob(p, logprob) for p in pieces))


def test_spans_and_confidence_are_off_by_default_and_logprobs_not_asked() -> None:
    engine = ScriptedEngine([GOOD])
    result = Extractor(engine).run(Person, DOC)
    assert result.meta.spans is None and result.meta.confidence is None
    assert "spans" not in result.to_dict()["meta"] and "confidence" not in result.to_dict()["meta"]
    assert engine.requests[0].logprobs is False


def test_spans_point_at_the_values_in_the_document() -> None:
    result = Extractor(ScriptedEngine([GOOD]), spans=True).run(Person, DOC)
    spans = result.meta.spans
    assert spans is not None
    assert {path: [DOC[s.start:s.end] for s in found] for path, found in spans.items()} == {
        "name": ["Alice Smith"], "age": ["34"], "city": ["Lisbon"]}
    assert result.to_dict()["meta"]["spans"]["name"] == [{"start": 0, "end": 11, "match": "exact"}]


def test_confidence_asks_for_logprobs_and_scores_each_field() -> None:
    pieces = ['{"', "name", '":"', "Alice", " Smith", '","', "age", '":', "34", ',"', "city", '":"', "Lis", "bon",
              '","', "email", '":', "null", "}"]
    engine = ScriptedEngine([with_logprobs(GOOD, pieces)])
    result = Extractor(engine, confidence=True).run(Person, DOC)
    assert engine.requests[0].logprobs is True
    assert result.meta.confidence == pytest.approx({"name": math.exp(-0.2), "age": math.exp(-0.1),
                                                    "city": math.exp(-0.2), "email": math.exp(-0.1)})
    assert result.to_dict()["meta"]["confidence"]["age"] == 0.9048


def test_confidence_is_absent_when_the_engine_returns_no_logprobs() -> None:
    result = Extractor(ScriptedEngine([GOOD]), confidence=True).run(Person, DOC)
    assert result.meta.confidence is None


def test_per_call_settings_override_the_extractor() -> None:
    extractor = Extractor(ScriptedEngine([GOOD, GOOD]), spans=True)
    assert extractor.run(Person, DOC, spans=False).meta.spans is None
    assert extractor.run(Person, DOC).meta.spans is not None


def test_a_value_not_in_the_document_is_fed_back_and_retried() -> None:
    engine = ScriptedEngine([INVENTED, GOOD])
    result = Extractor(engine, require_grounded=True).run(Person, DOC)
    assert result.data.name == "Alice Smith" and result.meta.attempts == 2
    message = ("$.name: 'Maria Garcia' does not occur in the document; copy the value exactly as the document "
               "writes it")
    assert result.meta.errors == [[message]]
    assert engine.requests[1].messages[-2] == {"role": "assistant", "content": INVENTED}
    assert message in engine.requests[1].messages[-1]["content"]
    assert result.meta.spans is None  # grounding was checked, spans were not asked for


def test_without_require_grounded_an_invented_value_passes() -> None:
    result = Extractor(ScriptedEngine([INVENTED]), spans=True).run(Person, DOC)
    assert result.data.name == "Maria Garcia" and result.meta.spans is not None
    assert result.meta.spans["name"] == []


def test_a_value_that_stays_ungrounded_fails_typed() -> None:
    with pytest.raises(ExtractionFailed) as info:
        Extractor(ScriptedEngine([INVENTED] * 3), require_grounded=True).run(Person, DOC)
    assert info.value.attempts == 3
    assert all("does not occur in the document" in errors[0] for errors in info.value.errors)


def test_enums_dates_and_numbers_need_not_occur_literally() -> None:
    doc = "ACME Tools Ltd\nInvoice no. INV-0042\nDate: 3rd of March, 2024\nHammer, two at 12.5 pounds each\nTotal due 25"
    record = {"vendor": "ACME Tools Ltd", "invoice_number": "INV-0042", "date": "2024-03-03", "currency": "GBP",
              "line_items": [{"description": "Hammer", "quantity": 2, "unit_price": 12.5}], "total": 25}
    result = Extractor(ScriptedEngine([json.dumps(record)]), require_grounded=True, spans=True).run(Invoice, doc)
    assert result.meta.attempts == 1
    assert result.meta.spans is not None and result.meta.spans["currency"] == []


def test_fuzzy_and_normalized_matches_count_as_grounded() -> None:
    doc = "ALICE SMITH, 34, Lisbonne."
    record = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
    result = Extractor(ScriptedEngine([record]), require_grounded=True, spans=True).run(Person, doc)
    assert result.meta.attempts == 1
    assert result.meta.spans is not None
    assert [s.match for s in result.meta.spans["name"]] == ["normalized"]
    assert result.meta.spans["city"] == [Span(17, 25, "fuzzy")]  # "Lisbonne", without the full stop


def test_require_grounded_sees_the_validated_value() -> None:
    """Person's own validator drops an email the document lacks before grounding looks at it."""
    record = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":"alice@invented.org"}'
    result = Extractor(ScriptedEngine([record]), require_grounded=True).run(Person, DOC)
    assert result.meta.attempts == 1 and result.data.email is None


def test_engine_request_carries_logprobs_only_when_confidence_is_asked() -> None:
    seen: list[GenerationRequest] = []

    def script(request: GenerationRequest) -> str:
        seen.append(request)
        return GOOD

    extractor = Extractor(ScriptedEngine(script))
    extractor.run(Person, DOC, spans=True, require_grounded=True)
    extractor.run(Person, DOC, confidence=True)
    assert [r.logprobs for r in seen] == [False, True]
