"""Grounded decoding within a budget: built off the event loop, cached, a fallback past the budget."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from extractor import Extractor, ScriptedEngine
from extractor.contracts.contract import task_from_model
from extractor.engines.base import GenerationRequest, GenerationResult
from extractor.errors import ExtractionFailed, GrammarTimeout, SchemaRejected
from extractor.grounding import constraint as constraints
from extractor.grounding.constraint import ConstraintBudget, ConstraintBuilder, DocumentConstraint, build_constraint
from extractor.grounding.decoding import SPAN_DEF, bound_lists, constrain_to_document
from schemas import Invoice, Person

SLOW = "Alice Smith, 34, lives in Lisbon."
SLOW_TOO = "Alice Smith, 35, lives in Lisbon now."
OTHER = "Bruno Costa, 51, lives in Porto."
ANSWERS = {SLOW: {"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None},
           SLOW_TOO: {"name": "Alice Smith", "age": 35, "city": "Madrid", "email": None},  # not in the document
           OTHER: {"name": "Bruno Costa", "age": 51, "city": "Porto", "email": None}}
PERSON = task_from_model(Person).strict_schema


def answer(request: GenerationRequest) -> str:
    document = next(doc for doc in ANSWERS if doc in request.messages[-1]["content"])
    return json.dumps(ANSWERS[document])


class Gate:
    """A build that waits, for the slow documents (Alice's) only, until the test lets it go."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, schema: Mapping[str, Any], document: str, budget: ConstraintBudget) -> DocumentConstraint:
        self.calls += 1
        if document.startswith("Alice"):
            self.started.set()
            self.release.wait(timeout=60)
        return build_constraint(schema, document, budget)


@pytest.fixture
def gate() -> Iterator[Gate]:
    yield Gate()


def use(builder: ConstraintBuilder) -> Iterator[ConstraintBuilder]:
    previous = constraints.set_default_builder(builder)
    try:
        yield builder
    finally:
        constraints.set_default_builder(previous)
        builder.close()


@pytest.fixture
def patient(gate: Gate) -> Iterator[ConstraintBuilder]:
    yield from use(ConstraintBuilder(gate, budget=ConstraintBudget(build_timeout_s=60)))


@pytest.fixture
def impatient(gate: Gate) -> Iterator[ConstraintBuilder]:
    yield from use(ConstraintBuilder(gate, budget=ConstraintBudget(build_timeout_s=0.05)))


def test_another_request_finishes_while_a_slow_constraint_is_built(gate: Gate, patient: ConstraintBuilder) -> None:
    engine = ScriptedEngine(answer)
    extractor = Extractor(engine, grounded_decoding=True, max_retries=0)

    async def go() -> None:
        slow = asyncio.create_task(extractor.arun(Person, SLOW))
        await asyncio.to_thread(gate.started.wait, 60)
        other = await extractor.arun(Person, OTHER)  # would hang here if the slow build held the loop
        assert other.data.city == "Porto" and other.meta.grounded_decoding == "full"
        assert not slow.done()
        gate.release.set()
        done = await slow
        assert done.data.city == "Lisbon" and done.meta.grounded_decoding == "full"

    asyncio.run(go())
    cities = {r.messages[-1]["content"].count("Lisbon"): r.schema["properties"]["city"] for r in engine.requests}
    assert cities == {1: {**PERSON["properties"]["city"], "anyOf": [{"type": "string", "enum": ["Lisbon"]},
                                                                     {"type": "null"}]},
                      0: {**PERSON["properties"]["city"], "anyOf": [{"type": "string", "enum": ["Porto"]},
                                                                    {"type": "null"}]}}


def test_past_the_time_budget_the_call_decodes_plain_and_checks_grounding(gate: Gate,
                                                                           impatient: ConstraintBuilder) -> None:
    engine = ScriptedEngine(answer)
    try:
        result = Extractor(engine, grounded_decoding=True, max_retries=0).run(Person, SLOW)
    finally:
        gate.release.set()
    assert result.meta.grounded_decoding == "fallback:build_timeout"
    assert result.meta.to_dict()["grounded_decoding"] == "fallback:build_timeout"
    assert engine.requests[0].schema == PERSON
    assert result.meta.spans is None  # the validator ran (require_grounded), spans were not asked for

    gate.release.clear()
    try:
        with pytest.raises(ExtractionFailed, match="Madrid"):  # not in the document: refused as by require_grounded
            Extractor(ScriptedEngine(answer), grounded_decoding=True, max_retries=0).run(Person, SLOW_TOO)
    finally:
        gate.release.set()


def test_builds_are_cached_by_schema_and_document(gate: Gate, patient: ConstraintBuilder) -> None:
    async def go() -> list[DocumentConstraint]:
        return list(await asyncio.gather(*(patient.constraint(PERSON, OTHER) for _ in range(5))))

    built = asyncio.run(go()) + asyncio.run(go())
    assert gate.calls == 1 and all(b.full for b in built)
    assert built[0].schema == constrain_to_document(PERSON, OTHER)


def test_size_budgets_fall_back_before_anything_is_compiled() -> None:
    tight = ConstraintBudget(max_schema_bytes=len(json.dumps(PERSON)))
    assert build_constraint(PERSON, OTHER, tight).status == "fallback:too_large"
    short = ConstraintBudget(max_document_chars=10)
    assert build_constraint(PERSON, OTHER, short).status == "fallback:document_too_long"
    assert build_constraint(PERSON, OTHER, ConstraintBudget()).full


def test_plain_calls_say_nothing_about_grounded_decoding() -> None:
    result = Extractor(ScriptedEngine(answer), max_retries=0, grounded_decoding=False).run(Person, OTHER)
    assert result.meta.grounded_decoding is None and "grounded_decoding" not in result.meta.to_dict()


def test_an_engine_that_cannot_compile_the_constraint_falls_back() -> None:
    class Refusing(ScriptedEngine):
        async def prepare(self, schema: Mapping[str, Any]) -> None:
            raise SchemaRejected("$", "too big for this engine")

    engine = Refusing(answer)
    result = Extractor(engine, grounded_decoding=True, max_retries=0).run(Person, OTHER)
    assert result.meta.grounded_decoding == "fallback:compile_error" and engine.requests[0].schema == PERSON


def test_a_one_line_invoice_of_400_amounts_is_built_quickly_and_falls_back_on_size() -> None:
    """Issue 17: `_factors` (now `_line_total`) grew with the fourth power of a line's amounts (400: 9.4 s, then a
    141 MB grammar). Now the line is no item line, and its 71 KB schema is past the size budget:
    it decodes with the task's schema, its list bounded by the one line that can be an item (without
    the bound SmolLM2 wrote items until max_tokens, past every deadline)."""
    doc = "Widget " + " ".join(f"{1000 + i}.{(i * 37) % 100:02d}" for i in range(400))
    strict = task_from_model(Invoice).strict_schema
    built = build_constraint(strict, doc, ConstraintBudget())
    assert built.status == "fallback:too_large"
    assert built.schema == {**strict, "properties": {**strict["properties"], "line_items": {
        **strict["properties"]["line_items"], "maxItems": 1}}}
    roomy = build_constraint(task_from_model(Invoice).strict_schema, doc, ConstraintBudget(max_schema_bytes=2**20))
    assert roomy.full and SPAN_DEF in roomy.schema["$defs"]


def test_a_fallback_for_size_keeps_the_lists_bounded_and_nothing_else() -> None:
    strict = task_from_model(Invoice).strict_schema
    lines = "\n".join(f"Item number {i} of the long order  {i % 7 + 1}  {i}.50" for i in range(120))
    built = build_constraint(strict, "ACME Ltd\n" + lines, ConstraintBudget(max_document_chars=1000))
    assert built.status == "fallback:document_too_long"
    assert built.schema["properties"]["line_items"]["maxItems"] == 120
    assert built.schema == bound_lists(strict, "ACME Ltd\n" + lines) and SPAN_DEF not in built.schema.get("$defs", {})
    plain = build_constraint(PERSON, "x" * 2000, ConstraintBudget(max_document_chars=1000))
    assert plain.schema == PERSON  # no list: the task's schema as it is

    async def through_the_builder() -> DocumentConstraint:
        builder = ConstraintBuilder(budget=ConstraintBudget(max_document_chars=1000))
        try:
            return await builder.constraint(PERSON, "x" * 2000)
        finally:
            builder.close()

    assert asyncio.run(through_the_builder()).schema is PERSON  # the caller's own object


def test_a_document_of_more_spans_than_the_cap_falls_back_instead_of_leaving_fields_free() -> None:
    doc = "\n".join(" ".join(f"w{line}x{i}" for i in range(6)) for line in range(1500))
    built = build_constraint(PERSON, doc, ConstraintBudget(max_document_chars=len(doc)))
    assert built.status == "fallback:too_many_spans"


def test_a_grammar_past_its_compile_budget_is_taken_back_by_the_retry_once_ready() -> None:
    """CI on a busy box: the grounded grammar's first compile missed `compile_timeout_s`, the
    model (decoding the task's schema) copied a city from the prompt's examples, and every retry
    decoded ungrounded again. Now the compile goes on, and the retry waits for it once more and
    decodes grounded: the error is fed back, and the second request carries the grounded schema."""
    release = asyncio.Event()

    class SlowFirstCompile(ScriptedEngine):
        compiles = 0

        async def prepare(self, schema: Mapping[str, Any]) -> None:
            self.compiles += 1
            if self.compiles == 1:
                await release.wait()  # past the budget; the compile goes on (shielded)

    def model(request: GenerationRequest) -> str:
        release.set()  # by the time the first output is judged the compile has landed
        city = "Lisbon" if request.schema != PERSON else "Torshavn"  # ungrounded: an example's city
        return json.dumps({"name": "Alice Smith", "age": 34, "city": city, "email": None})

    engine = SlowFirstCompile(model)
    with contextmanager(use)(ConstraintBuilder(budget=ConstraintBudget(compile_timeout_s=0.05))):
        result = Extractor(engine, grounded_decoding=True, max_retries=1).run(Person, SLOW)
    first, second = engine.requests
    assert first.schema == PERSON and second.schema != PERSON
    assert result.data.city == "Lisbon" and result.meta.grounded_decoding == "full" and result.meta.attempts == 2
    assert result.meta.errors == [["$.city: 'Torshavn' does not occur in the document; "
                                   "copy the value exactly as the document writes it"]]


def test_the_retry_waits_for_a_grammar_still_compiling_past_a_second_budget() -> None:
    """Documents queued for the one compiler: the grounded grammar landed after the retry's own
    budget too, and all three attempts of 16 of 32 job adverts decoded ungrounded. The retry now
    waits for the compile to its end."""
    class SlowCompile(ScriptedEngine):
        async def prepare(self, schema: Mapping[str, Any]) -> None:
            if schema != PERSON:
                await asyncio.sleep(0.5)  # ten budgets

    def model(request: GenerationRequest) -> str:
        city = "Lisbon" if request.schema != PERSON else "Torshavn"
        return json.dumps({"name": "Alice Smith", "age": 34, "city": city, "email": None})

    engine = SlowCompile(model)
    with contextmanager(use)(ConstraintBuilder(budget=ConstraintBudget(compile_timeout_s=0.05))):
        result = Extractor(engine, grounded_decoding=True, max_retries=1).run(Person, SLOW)
    assert [r.schema == PERSON for r in engine.requests] == [True, False]
    assert result.data.city == "Lisbon" and result.meta.grounded_decoding == "full"


def test_an_output_cut_while_the_grounded_grammar_compiles_retries_grounded_not_bounded() -> None:
    """The ungrounded first attempt of a job advert looped over its skills to max_tokens; bounding
    the task's schema for the retry dropped the grounded grammar still compiling, and every attempt
    decoded ungrounded (16 of 32 dev adverts failed their grounding check three times)."""
    class SlowCompile(ScriptedEngine):
        async def prepare(self, schema: Mapping[str, Any]) -> None:
            if schema != PERSON:
                await asyncio.sleep(0.3)

    def model(request: GenerationRequest) -> GenerationResult:
        if request.schema == PERSON:
            return GenerationResult('{"name": "Alice Smith", "age": 34, "city": "' + "Lis " * 200, "length", 10, 40)
        return GenerationResult(json.dumps(ANSWERS[SLOW]), "stop", 10, 20)

    engine = SlowCompile(model)
    with contextmanager(use)(ConstraintBuilder(budget=ConstraintBudget(compile_timeout_s=0.05))):
        result = Extractor(engine, grounded_decoding=True, max_retries=1).run(Person, SLOW)
    assert [r.schema == PERSON for r in engine.requests] == [True, False]
    assert result.meta.grounded_decoding == "full" and result.meta.bounded is None


def test_a_grammar_past_the_engines_own_limit_leaves_the_retry_ungrounded_and_checked() -> None:
    """The retry waits for the compile to its end; one the engine gives up on (its own compile limit,
    a GrammarTimeout) leaves the retry on the task's schema, its values checked afterwards."""
    class NeverReady(ScriptedEngine):
        async def prepare(self, schema: Mapping[str, Any]) -> None:
            if schema != PERSON:
                await asyncio.sleep(0.3)  # past the budget, then past the engine's own limit
                raise GrammarTimeout("$", "grammar compilation took longer than 0.3s")

    engine = NeverReady(["{\"name\":\"Alice Smith\",\"age\":34,\"city\":\"Torshavn\",\"email\":null}",
                         json.dumps(ANSWERS[SLOW])])
    with contextmanager(use)(ConstraintBuilder(budget=ConstraintBudget(compile_timeout_s=0.05))):
        result = Extractor(engine, grounded_decoding=True, max_retries=1).run(Person, SLOW)
    assert [r.schema for r in engine.requests] == [PERSON, PERSON]
    assert result.meta.grounded_decoding == "fallback:compile_timeout" and result.meta.attempts == 2


def test_fields_the_candidates_settle_stay_grounded_when_the_documents_spans_are_too_large() -> None:
    """A prompt injection's long paragraphs made the person's per-document schema too large (all
    of its spans offered to name, city and e-mail): it fell back to the task's schema, and SmolLM2
    copied a city from the prompt's examples. The candidates settle every person field, so the
    spans are never offered to them and the document decodes grounded."""
    words = " ".join(f"word{i} other{i}, thing{i}." for i in range(60))
    doc = f"Alice Smith is 34 years old and lives in Lisbon.\n\n{words}"
    assert build_constraint(PERSON, doc, ConstraintBudget()).status == "fallback:too_large"
    engine = ScriptedEngine(lambda r: json.dumps(ANSWERS[SLOW]))
    result = Extractor(engine, grounded_decoding=True, max_retries=0).run(Person, doc)
    assert result.meta.grounded_decoding == "full"
    assert engine.requests[0].schema["properties"]["city"]["anyOf"][0]["enum"] == ["Lisbon"]


def test_the_candidate_rules_never_read_a_document_past_the_size_budget() -> None:
    """Setting the settled fields aside ran the person rules (regexes over the whole text) on a
    10 MB document on the event loop before the size check: minutes. Past `max_document_chars`
    the rules are not run at all."""
    read: list[int] = []
    person = task_from_model(Person)
    rules = person.field_candidates
    assert rules is not None

    def counting(document: str) -> dict[str, list[Any]]:
        read.append(len(document))
        return rules(document)

    task = dataclasses.replace(person, field_candidates=counting)
    engine = ScriptedEngine(lambda r: json.dumps(ANSWERS[OTHER]))
    long_doc = OTHER + " filler" * 1000
    result = Extractor(engine, grounded_decoding=True, max_retries=0, chunking="off").run(task, long_doc)
    assert result.meta.grounded_decoding == "fallback:document_too_long" and read == []
    Extractor(engine, grounded_decoding=True, max_retries=0).run(task, OTHER)
    assert read == [len(OTHER)]


def test_the_build_budget_counts_from_the_start_of_the_build_not_the_queue() -> None:
    """40 documents at once behind one build thread, each build 50 ms, a 0.2 s build budget: the
    last waits about 2 s in the queue, but no build is slow, so none falls back; a build that is
    slow itself does, and so does one that waits longer than `build_queue_s` to start."""
    import time

    def steady(schema: Mapping[str, Any], document: str, budget: ConstraintBudget) -> DocumentConstraint:
        time.sleep(0.5 if "slow" in document else 0.05)
        return build_constraint(schema, document, budget)

    builder = ConstraintBuilder(steady, budget=ConstraintBudget(build_timeout_s=0.2), workers=1)

    async def all_of(docs: list[str], on: ConstraintBuilder = builder) -> list[DocumentConstraint]:
        return list(await asyncio.gather(*(on.constraint(PERSON, d) for d in docs)))

    try:
        docs = [f"Person {i} is {20 + i} and lives in Lisbon." for i in range(40)]
        assert {c.status for c in asyncio.run(all_of(docs))} == {"full"}
        assert asyncio.run(all_of(["A slow one, 30, of Porto."]))[0].status == "fallback:build_timeout"
    finally:
        builder.close()
    queued = ConstraintBuilder(steady, budget=ConstraintBudget(build_timeout_s=0.2, build_queue_s=0.3), workers=1)
    try:
        statuses = [c.status for c in asyncio.run(all_of([f"Person {i}, {30 + i}, of Faro." for i in range(20)], queued))]
        assert statuses[0] == "full" and statuses[-1] == "fallback:build_timeout"
    finally:
        queued.close()


def test_the_compile_budget_does_not_count_the_compilers_start_up() -> None:
    """The first document of a run (dev set person.jsonl, p000): the grammar child was still
    starting (seconds: xgrammar and the tokenizer) when its compile budget ran out, so it decoded
    with the task's schema and copied an example's age. The budget now starts once the engine's
    compiler is up (`Engine.compiler_ready`)."""

    class SlowStart(ScriptedEngine):
        def __init__(self, outputs: Any) -> None:
            super().__init__(outputs)
            self.up = asyncio.Event()

        async def compiler_ready(self) -> None:
            await asyncio.sleep(0.3)  # the child's start-up, longer than the budget
            self.up.set()

        async def prepare(self, schema: Mapping[str, Any]) -> None:
            await self.up.wait()  # a compile waits for the child, then is quick

    engine = SlowStart([json.dumps(ANSWERS[SLOW])])
    with contextmanager(use)(ConstraintBuilder(budget=ConstraintBudget(compile_timeout_s=0.1))):
        result = Extractor(engine, grounded_decoding=True, max_retries=0).run(Person, SLOW)
    assert result.meta.grounded_decoding == "full"
    assert engine.requests[0].schema != PERSON
