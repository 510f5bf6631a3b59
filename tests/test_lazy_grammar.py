"""The local engine's per-document grammars (grounded decoding) are llguidance's, built lazily:
the values the schema allows and no others, and the same end as xgrammar's matcher."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import xgrammar as xgr

from extractor import Extractor, task_from_model
from extractor.engines.lazy_grammar import LazyGrammars, is_per_document
from extractor.errors import SchemaRejected
from extractor.grounding.decoding import constrain_to_document
from schemas import Receipt

pytestmark = pytest.mark.model

RECEIPT = task_from_model(Receipt)
DOC = ("KEDAI MAKANAN SRI MELATI\nNO 12, JALAN SS 2/24,\n47300 PETALING JAYA, SELANGOR\n"
       "DATE: 2017-11-09  TIME: 19:20\nNASI LEMAK            6.50\nTEH TARIK             2.20\n"
       "TOTAL                 8.70\nCASH                 10.00\n")


@pytest.fixture(scope="module")
def grammars(local_engine: Any) -> LazyGrammars:
    return LazyGrammars(local_engine.tokenizer, local_engine.vocab_size)


def walk(local_engine: Any, matcher: Any, text: str, *, stop: bool = True) -> list[bool]:
    """Feed `text`'s tokens, then the stop token (`stop`), through `matcher` as the engine's loop
    does: each token checked against the mask first; what `accept_token` said for each."""
    ids = local_engine.tokenizer.encode(text, add_special_tokens=False) + [local_engine.tokenizer.eos_token_id] * stop
    bitmask = xgr.allocate_token_bitmask(1, local_engine.vocab_size)
    accepted = []
    for token in ids:
        matcher.fill_next_token_bitmask(bitmask, 0)
        allowed = bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)
        accepted.append(allowed and matcher.accept_token(token))
        if not accepted[-1]:
            break
    return accepted


def test_a_per_document_schema_is_recognised_and_the_tasks_own_is_not() -> None:
    assert is_per_document(constrain_to_document(RECEIPT.strict_schema, DOC))
    assert not is_per_document(RECEIPT.strict_schema)


def test_values_from_the_document_pass_and_others_do_not(local_engine: Any, grammars: LazyGrammars) -> None:
    template = grammars.compile(json.dumps(constrain_to_document(RECEIPT.strict_schema, DOC)))
    good = {"company": "KEDAI MAKANAN SRI MELATI", "address": "NO 12, JALAN SS 2/24, 47300 PETALING JAYA, SELANGOR",
            "date": "2017-11-09", "total": "8.70", "items": [{"description": "NASI LEMAK", "amount": "6.50"}]}
    matcher = template.start()
    accepted = walk(local_engine, matcher, json.dumps(good, separators=(",", ":")))
    assert all(accepted) and matcher.is_terminated()
    invented = dict(good, company="KEDAI KOPI SRI MELATI")  # no such span
    assert not all(walk(local_engine, template.start(), json.dumps(invented, separators=(",", ":"))))


def test_the_request_ends_on_the_stop_token_not_on_the_last_brace(local_engine: Any, grammars: LazyGrammars) -> None:
    """llguidance counts the JSON done at its last `}`; the engine's loop would then drop that
    token, so the matcher says it is terminated only once the stop token is taken (xgrammar's way)."""
    template = grammars.compile(json.dumps({"$defs": {"DocumentSpan": {"type": "string"}}, "type": "object",
                                            "properties": {"a": {"enum": ["x"]}}, "required": ["a"],
                                            "additionalProperties": False}))
    matcher = template.start()
    ids = local_engine.tokenizer.encode('{"a":"x"}', add_special_tokens=False)
    for token in ids:
        assert matcher.accept_token(token)
    assert not matcher.is_terminated()
    assert matcher.accept_token(local_engine.tokenizer.eos_token_id) and matcher.is_terminated()
    assert not matcher.failed


def test_a_matcher_past_its_limits_ends_its_row_instead_of_failing_the_batch(local_engine: Any,
                                                                             grammars: LazyGrammars) -> None:
    """llguidance never raises mid-decoding: past a limit its matcher is in error and allows only
    the stop token, which the matcher then takes as the end of the row (its JSON incomplete, the
    pipeline retries it), where a refused token would fail every request of the engine's batch."""
    matcher = grammars.compile(json.dumps(constrain_to_document(RECEIPT.strict_schema, DOC))).start()
    matcher._matcher.consume_token(local_engine.tokenizer.encode("}", add_special_tokens=False)[0])  # not JSON's start
    assert matcher._matcher.is_error()
    assert matcher.accept_token(local_engine.tokenizer.eos_token_id) and matcher.is_terminated()
    assert matcher.failed  # the local engine ends the row with finish_reason "grammar"


def test_copies_of_one_template_decode_independently(local_engine: Any, grammars: LazyGrammars) -> None:
    template = grammars.compile(json.dumps(constrain_to_document(RECEIPT.strict_schema, DOC)))
    first, second = template.start(), template.start()
    assert all(walk(local_engine, first, '{"company":"KEDAI', stop=False))
    assert all(walk(local_engine, second, '{"company":"NASI', stop=False))  # the first one's progress is not shared


def test_a_schema_llguidance_refuses_is_a_schema_rejection(grammars: LazyGrammars) -> None:
    with pytest.raises(SchemaRejected, match="llguidance"):
        grammars.compile(json.dumps({"type": "string", "format": "no-such-format"}))


def test_the_local_engine_decodes_grounded_with_the_lazy_grammar(local_engine: Any) -> None:
    """Grounded decoding on the local engine: the per-document schema goes to the lazy cache, not
    to xgrammar's, and the record is grounded in full."""
    before = local_engine.lazy_cache.stats().misses
    compiled_before = local_engine.grammar_cache.stats().misses
    result = Extractor(local_engine, grounded_decoding=True, max_retries=0).run("receipt", DOC)
    assert result.meta.grounded_decoding == "full"
    assert local_engine.lazy_cache.stats().misses == before + 1
    assert local_engine.grammar_cache.stats().misses <= compiled_before + 1  # at most the task's own, once
    schema = constrain_to_document(RECEIPT.strict_schema, DOC + "\nTHANK YOU")
    matcher = local_engine._matcher(schema)
    bitmask = xgr.allocate_token_bitmask(1, local_engine.vocab_size)
    matcher.fill_next_token_bitmask(bitmask, 0)
    assert torch.count_nonzero(bitmask) > 0


def test_a_row_the_grammar_stopped_is_retried_under_the_tasks_own_schema() -> None:
    """A per-document grammar past llguidance's limits stops its row ("grammar"): decoding is
    deterministic, so the retry under the same grammar would stop again; the task's own schema
    takes over (grounded after the fact), and that attempt is not the model's to count."""
    from extractor import Extractor, GenerationResult
    from extractor.engines.fake import ScriptedEngine

    record = {"company": "KEDAI MAKANAN SRI MELATI", "address": "NO 12, JALAN SS 2/24,", "date": "2017-11-09",
              "total": "8.70", "items": None}
    engine = ScriptedEngine([GenerationResult('{"company":"KEDAI', "grammar", 10, 3), json.dumps(record)])
    extractor = Extractor(engine, max_retries=0)  # no retry of the model's own: the fallback is not one
    result = extractor.run("receipt", DOC)
    first, second = engine.requests
    assert first.schema != RECEIPT.strict_schema and second.schema == RECEIPT.strict_schema
    assert result.meta.grounded_decoding == "fallback:grammar_limit" and result.meta.attempts == 1
    assert result.meta.errors == [["the engine's grammar stopped the output mid-decoding (past one of its limits)"]]
