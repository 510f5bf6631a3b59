"""The extraction loop: generate, validate, feed the errors back, repeat.

`extract_one` runs one document; `extract_together` runs several (the chunks of a long
document, each a `Job`, possibly with the schema the engine is to enforce for it), every round of
attempts in one engine call.

Never returns an unvalidated value: it returns an `Extraction` whose data
passed every gate, or raises `ExtractionFailed` with the errors of every
attempt. An output cut at `max_tokens` is a failure; the next attempt gets
the budget grown by `length_growth`, up to `max_tokens_cap` (both in `meta`);
still cut at the cap (a small model looping on one item, key or phrase), one more attempt runs
under the schema with its open repetitions bounded (`extractor.contracts.bounds`, `meta.bounded`),
cut again, one more under the compact schema (required properties only, one item, short strings:
`COMPACT_BOUNDS`), then the loop gives up on length. A retry never asks for more than the engine's context holds
(`TokenBudget` engines): where the conversation so far (the rejected output and the errors fed
back) would not fit with the budget, the retry sends the document and the latest errors only,
and the budget is cut to what is left. The first attempt
is greedy; retries sample at `retry_temperature` with a per-attempt seed, so
they do not walk greedy decoding's path into the same error again.

Asked for, a valid output also gets its values' spans in the document (`spans`, see
`grounding`) and per-field confidence from the engine's token logprobs (`confidence`, see
`confidence`); `require_grounded` makes a free-text value that occurs nowhere in the document a
validation error like any other: fed back, retried, and in `ExtractionFailed` if it persists.
`grounded_decoding` goes further, before the fact: the engine gets a per-document schema whose
free-text strings and numbers can only take values that occur in the document
(`extractor.grounding.decoding`); validation still checks against the task's own strict schema.
That schema is built off the event loop within a budget and its grammar compiled before the
request reaches the engine (`Engine.prepare`, within `compile_timeout_s`; an engine that only
checks schemas, vLLM's, takes it unchecked once the task's own schema passed: `Engine.admit`); past either budget
the call decodes with the task's schema and checks its values against the document
(`require_grounded`) instead, and `meta.grounded_decoding` says which it was
(`extractor.grounding.constraint`). The compile goes on past its budget: a retry of such a
document waits for it once more (again within `compile_timeout_s`) and, once it is ready,
decodes grounded again (`meta.grounded_decoding` "full"), so that a busy moment costs an
attempt, not the document. The fields a contract has candidate rules for
(`Contract.field_candidates`, e.g. the receipt's) are offered only those candidates
(`extractor.grounding.candidates`). A value a validator dropped or changed is reported in
`meta.changed` with what the model wrote.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from pydantic import BaseModel

from extractor.contracts.bounds import COMPACT_BOUNDS, bound_repetitions, looping
from extractor.contracts.contract import Task
from extractor.contracts.prepare import loose_schema
from extractor.engines.base import (
    AdapterRef,
    Engine,
    GenerationRequest,
    GenerationResult,
    Message,
    generate_streaming,
    has_token_budget,
)
from extractor.errors import EmptyDocument, ExtractionFailed, GrammarTimeout, SchemaRejected
from extractor.grounding.candidates import offer_candidates, put_back, set_aside
from extractor.grounding.confidence import field_confidence
from extractor.grounding.constraint import SIZE_REASONS, DocumentConstraint, bounded_fallback, default_builder, fallback
from extractor.grounding.field_kinds import task_rules
from extractor.grounding.spans import Span, ground_record, ungrounded_errors
from extractor.pipeline.documents import check_unicode
from extractor.pipeline.injection import echo_errors
from extractor.pipeline.options import DEFAULT_OPTIONS, ExtractOptions
from extractor.pipeline.prompt import build_messages, feedback_message
from extractor.pipeline.result import Extraction, Meta
from extractor.pipeline.streaming import FieldGates, FieldStream, pin_fields
from extractor.pipeline.validate import Invalid, validate_output, validator_changes

#: a retry is cut to the context's room only while at least this many output tokens are left
MIN_FIT_TOKENS = 64


@dataclass(frozen=True)
class Job:
    """One document of `extract_together`: its task, its text, errors to feed back before the
    first attempt, and the schema the engine is to enforce (`schema`, built by the caller, e.g.
    one item per known row: `extractor.grounding.rows`; `status` is its `meta.grounded_decoding`;
    derived from the task's schema and bounded, like grounded decoding's: `Engine.admit`).
    Without `schema`, or where it does not compile, the options decide as for any document.
    `patient`: the grammar's compile is waited for (bounded by the engine's own compile limit,
    not by the `compile_timeout_s` budget of one interactive document): a piece of a long
    document, whose grammars compile one after another, is worth its grammar."""

    task: Task[Any]
    document: str
    feedback: list[str] | None = None
    schema: Mapping[str, Any] | None = None
    status: str | None = None
    patient: bool = False


@dataclass(frozen=True)
class _Judged:
    outcome: Any  # a validated value, or Invalid
    spans: dict[str, list[Span]] | None = None
    cut: bool = False  # finished at max_tokens
    grammar_stopped: bool = False  # the engine's grammar library stopped it mid-decoding
    changed: dict[str, Any] | None = None  # what the model wrote where a validator dropped or changed it


def _judge(task: Task[Any], result: GenerationResult, document: str, system: str, options: ExtractOptions,
           max_tokens: int) -> _Judged:
    """Every gate one output must pass: complete, valid, not echoing the instructions, grounded
    when that is required."""
    outcome = validate_output(task, result.text, document)
    if result.finish_reason == "length" and isinstance(outcome, Invalid):
        # (a record complete before the budget ran out, the rest whitespace the grammar allows
        # after it, is taken: on vLLM SmolLM2 wrote a whole record, then newlines until the end)
        return _Judged(Invalid([f"output cut off at max_tokens={max_tokens} before the JSON was complete"]), cut=True)
    if result.finish_reason == "grammar" and isinstance(outcome, Invalid):
        return _Judged(Invalid(["the engine's grammar stopped the output mid-decoding (past one of its limits)"]),
                       grammar_stopped=True)
    if not isinstance(outcome, Invalid) and (echoes := echo_errors(result.text, system, document)):
        outcome = Invalid(echoes)  # a field repeats the instructions (a prompt injection): refused, retried
    if isinstance(outcome, Invalid):
        return _Judged(outcome)
    data = outcome.value.model_dump(mode="json") if isinstance(outcome.value, BaseModel) else outcome.value
    spans = None
    if options.spans or options.require_grounded:
        spans = ground_record(data, document)
        errors = ungrounded_errors(data, task.strict_schema, spans) if options.require_grounded else []
        if errors:
            return _Judged(Invalid(errors), spans)
    changed = validator_changes(json.loads(result.text), data) if task.model is not None else {}
    return _Judged(outcome, spans, changed=changed or None)


async def _compile_failure(engine: Engine, schema: Mapping[str, Any], patient: bool = False,
                           base: Mapping[str, Any] | None = None) -> str | None:
    """Why an engine that compiles grammars in-process did not get `schema`'s grammar ready
    ("compile_timeout", "compile_error"), or None where it did (or compiles nothing ahead): within
    the budget (`compile_timeout_s`), or `patient`ly, bounded only by the engine's own compile
    limit. The compile is shielded: past the budget it still lands in the engine's cache.
    `base`: the schema `schema` was derived from (grounded decoding); once `base` is ready, an
    engine that only checks schemas takes `schema` unchecked (`Engine.admit`)."""
    prepare = getattr(engine, "prepare", None)
    if prepare is None:
        return None
    admit = getattr(engine, "admit", None)
    if base is not None and admit is not None and admit(schema):
        return await _compile_failure(engine, base, patient)  # what `schema` stands on
    ready = getattr(engine, "compiler_ready", None)
    if ready is not None:  # the compiler's start-up (seconds, once) is not this schema's compile
        await ready()
    timeout = None if patient else default_builder().budget.compile_timeout_s
    try:
        await asyncio.wait_for(asyncio.shield(prepare(schema)), timeout)
    except (TimeoutError, GrammarTimeout):
        return "compile_timeout"
    except SchemaRejected:
        return "compile_error"
    return None


def _candidates(task: Task[Any], document: str) -> Mapping[str, Sequence[object]] | None:
    """The task's candidate values for `document` (`field_kinds.task_rules`), or None where it has
    no rules or the document is longer than the constraint builder takes: the rules are regexes
    over the whole text, and megabytes would hold the event loop."""
    rules = task_rules(task)
    if rules is None or len(document) > default_builder().budget.max_document_chars:
        return None
    return rules(document)


async def _grounded_constraint(engine: Engine, task: Task[Any], document: str,
                               patient: bool = False) -> tuple[DocumentConstraint, Mapping[str, Any] | None]:
    """The document's constraint, its grammar ready in an engine that compiles in-process; a
    fallback to the task's schema past the budget (see `extractor.grounding.constraint`), with
    the grounded schema whose compile is still going on (for a retry) where that was the reason."""
    builder = default_builder()
    strict = task.strict_schema
    candidates = _candidates(task, document)
    base, settled = set_aside(strict, candidates) if candidates is not None else (strict, {})
    constraint = await builder.constraint(base if settled else strict, document)
    if not constraint.full:
        if settled:  # the task's own schema again (its lists bounded where the reason was size)
            reason = constraint.status.removeprefix("fallback:")
            constraint = (await asyncio.to_thread(bounded_fallback, strict, document, reason)
                          if reason in SIZE_REASONS else fallback(strict, reason))
        return constraint, None
    if settled:
        constraint = replace(constraint, schema=put_back(constraint.schema, settled))
    failure = await _compile_failure(engine, constraint.schema, patient, base=strict)
    if failure is None:
        return constraint, None
    return fallback(task.strict_schema, failure), (constraint.schema if failure == "compile_timeout" else None)


async def _offered(engine: Engine, task: Task[Any], document: str, patient: bool) -> Mapping[str, Any]:
    """A plain model's schema under plain decoding, with the fields its property names type
    offered their candidates only (`extractor.grounding.field_kinds`); the task's schema where
    none changes, the document is past the rules' length, or the offered schema does not compile."""
    candidates = _candidates(task, document)
    if candidates is None:
        return task.strict_schema
    offered = offer_candidates(task.strict_schema, candidates)
    if offered == task.strict_schema or await _compile_failure(engine, offered, patient, base=task.strict_schema):
        return task.strict_schema
    return offered


@dataclass
class _Attempts:
    """One document's way through the retry loop, one engine result at a time, so that many
    documents can share each engine call (`extract_together`)."""

    task: Task[Any]
    document: str
    options: ExtractOptions
    engine: Engine
    #: messages fed back before the first attempt (a merged record's errors, `extractor.longdoc`)
    feedback: list[str] | None = None
    #: the task's LoRA adapter (`extractor.adapters`), every attempt runs with it
    adapter: AdapterRef | None = None
    #: what the engine enforces: the task's strict schema, or grounded decoding's per-document one
    schema: Mapping[str, Any] | None = None
    #: meta.grounded_decoding: "full", "fallback:<reason>", or None (plain decoding)
    grounded: str | None = None
    #: the grounded schema whose grammar missed the compile budget: a retry takes it once ready
    pending: Mapping[str, Any] | None = None
    #: meta.grammar: None, or "validate-only:<reason>" once `loosen` took the schema's skeleton
    grammar: str | None = None
    #: the document's fields streamed as they settle (`extractor.pipeline.streaming`): the engine's
    #: text goes to it, and every attempt decodes with the fields it sent pinned
    watch: FieldStream | None = None
    #: decode with the fields `watch` sent pinned; off once a pinned schema failed to compile
    pin: bool = True
    #: the attempt under way has fields pinned
    pinned: bool = False

    def __post_init__(self) -> None:
        self.start = time.perf_counter()
        self.messages: list[Message] = build_messages(self.task, self.document)
        if self.feedback:
            self.messages.append(feedback_message(self.feedback))
        if self.schema is None:
            self.schema = self.task.strict_schema
        self.max_tokens = min(self.task.max_tokens, self.options.max_tokens_cap)
        self.seen: list[list[str]] = []
        self.attempt = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.outcome: Extraction[Any] | ExtractionFailed | None = None
        self.unchecked_options = self.options  # before a fallback asked for require_grounded
        self.bounded: dict[str, int] | None = None  # meta.bounded, once `_bound` took over
        self.compacted = False  # `_bound`'s last step (`COMPACT_BOUNDS`) taken
        self.readmitted = False  # the skeleton admitted again after a time-out (`step_down`)
        self.leaves = False  # the skeleton keeps its strings' patterns and formats (`loosen`)
        self.last_output: str | None = None  # the model's text on the last attempt that failed

    def _fit(self) -> None:
        """An attempt that would not fit the engine's context: a retry's conversation so far is
        dropped (the document and the latest errors stay), then the budget cut to what is left (a
        first attempt too: a short document under a schema whose prompt is long)."""
        engine = self.engine
        if not has_token_budget(engine):
            return
        used = engine.count_prompt_tokens(self.messages)
        if used + self.max_tokens <= engine.context_length:
            return
        base = len(build_messages(self.task, self.document))
        if self.attempt > 1 and len(self.messages) > base + 1:
            self.messages = [*self.messages[:base], self.messages[-1]]  # the latest feedback only
            used = engine.count_prompt_tokens(self.messages)
        if used + self.max_tokens > engine.context_length and engine.context_length - used >= MIN_FIT_TOKENS:
            self.max_tokens = engine.context_length - used

    def request(self) -> GenerationRequest:
        # any retry samples a little: greedy decoding would walk the same path again
        # (into the same validation error, or the same loop up to max_tokens)
        self.attempt += 1
        self._fit()
        options = self.options
        assert self.schema is not None
        schema = pin_fields(self.schema, self.watch.pinned) if self.watch is not None and self.pin else self.schema
        return GenerationRequest(messages=tuple(self.messages), schema=schema, max_tokens=self.max_tokens,
                                 temperature=options.retry_temperature if (self.seen or self.feedback) else 0.0,
                                 seed=options.seed + self.attempt - 1, logprobs=options.logprobs or options.confidence,
                                 repetition_penalty=options.repetition_penalty, adapter=self.adapter)

    def ungrounded(self, reason: str = "compile_timeout") -> bool:
        """After a GrammarTimeout: this document's own grammar (grounded decoding) was too large to
        compile in time; the task's grammar, compiled once for every document, takes over for the
        attempt again, and values are checked against the document afterwards. False when it was
        the task's own grammar that timed out."""
        if self.schema is self.task.strict_schema or self.bounded is not None or self.grammar is not None:
            return False
        self.pending = self.schema if self.grounded == "full" and reason == "compile_timeout" else None
        self.schema, self.grounded, self.attempt = self.task.strict_schema, f"fallback:{reason}", self.attempt - 1
        self.options = self.options.model_copy(update={"require_grounded": True})
        return True

    def step_down(self, exc: GrammarTimeout | SchemaRejected) -> bool:
        """After the engine refused a grammar or could not compile it in time: a grounded schema
        gives way to the task's (`ungrounded`); the task's own schema of a raw-schema task, to its
        skeleton (`loosen`). False where neither applies (the error stands)."""
        # (a grounded schema the backend refused: vLLM's may refuse what ours compiled)
        if self.ungrounded("compile_timeout" if isinstance(exc, GrammarTimeout) else "compile_error"):
            return True
        if self.loosen("compile_timeout" if isinstance(exc, GrammarTimeout) else "refused"):
            return True
        # the skeleton itself timed out: a verdict on it that raced its admission (a compile of the same
        # schema still running in the guard, kept after it): admitted again, once
        if isinstance(exc, GrammarTimeout) and self.grammar is not None and not self.readmitted:
            self.readmitted, self.attempt = True, self.attempt - 1
            admit = getattr(self.engine, "admit", None)
            return admit is not None and bool(admit(self.schema))
        return False

    def loosen(self, reason: str) -> bool:
        """The task's grammar refused or too slow to compile: a raw-schema task decodes under the
        schema's skeleton (`loose_schema`), every answer validated against the schema as before,
        where `grammar_fallback` allows it. The attempt is not counted."""
        prepared = self.task.prepared
        if not self.options.grammar_fallback or prepared is None:
            return False
        if self.grammar is not None and not self.leaves:
            return False  # (loosened already: from any schema of the task's, its own or bounded)
        bare = loose_schema(prepared)
        # a grammar too slow to compile keeps its strings' patterns and formats; one refused does not
        # (a pattern may be why), nor one whose skeleton would be the schema itself, nor a skeleton
        # with its leaves refused or too slow in turn (then the bare one)
        skeleton = loose_schema(prepared, leaves=True) if self.grammar is None and reason == "compile_timeout" else bare
        self.leaves = skeleton != bare and skeleton != self.task.strict_schema
        skeleton = skeleton if self.leaves else bare
        self.schema, self.grammar, self.attempt = skeleton, f"validate-only:{reason}", self.attempt - 1
        # the bare skeleton is bounded by construction (`SKELETON_NODES`, `SKELETON_DEPTH`): an engine
        # that only checks schemas takes it unchecked. Checked, on the H200 at 256 schemas in flight,
        # the compile guard timed out schemas that compile in 12 ms here, and their skeletons after
        # them (50 of 244). One with its leaves is checked like any schema: its patterns were never
        # compiled on their own, and past the limit or refused it gives way to the bare one
        admit = getattr(self.engine, "admit", None)
        if admit is not None and not self.leaves:
            admit(self.schema)
        return True

    async def reground(self) -> None:
        """Before a retry: the grounded grammar that missed its compile budget, its compile (still
        running, shielded) waited for to the end, bounded by the engine's own compile limit; ready,
        the retry decodes grounded again. (Waited for within the budget only, it missed it again
        whenever documents queued for the one compiler: on the job_posting dev set, 32 adverts at
        once on 2 cores, 16 spent all three attempts ungrounded, writing the example's values.)"""
        pending, self.pending = self.pending, None
        if pending is None or not self.seen or await _compile_failure(self.engine, pending, patient=True,
                                                                          base=self.task.strict_schema) is not None:
            return
        self.schema, self.grounded, self.options = pending, "full", self.unchecked_options

    def take(self, result: GenerationResult) -> None:
        """Judge one engine result; sets `outcome` when the document is done."""
        options = self.options
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        judged = _judge(self.task, result, self.document, self.messages[0]["content"], options, self.max_tokens)
        if isinstance(judged.outcome, Invalid):
            self.seen.append(judged.outcome.errors)
            self.last_output = result.text
            # a per-document grammar past its library's limits would stop the same way again (the
            # decoding is deterministic): the task's own grammar takes over, and the attempt is not
            # the model's to count
            if judged.grammar_stopped and self.ungrounded("grammar_limit"):
                return
            if judged.cut:
                # a cut output is retried with a larger budget, up to the cap (reported in meta); at
                # the cap, or at once where the output was looping (`looping`), with the schema's
                # open repetitions bounded
                at_cap = self.max_tokens >= options.max_tokens_cap or options.length_growth == 1
                # a document whose grounded grammar is still compiling (`pending`) retries with it, its
                # lists bounded by the document, not with the task's schema bounded: bounding dropped
                # it, and 16 of 32 job adverts (decoded ungrounded, looping over skills) never got it back
                regrounding = self.pending is not None
                bounded = not regrounding and (at_cap or looping(result.text)) and self._bound()
                if at_cap and not bounded and not regrounding:
                    self._give_up()
                    return
                if not at_cap:
                    self.max_tokens = min(self.max_tokens * options.length_growth, options.max_tokens_cap)
            else:
                self.messages = [*self.messages, {"role": "assistant", "content": result.text},
                                 feedback_message(judged.outcome.errors)]
            if self.attempt >= options.max_attempts:
                self._give_up()
            return
        confidence = None
        if options.confidence and result.logprobs is not None:
            confidence = field_confidence(result.text, result.logprobs)
        meta = Meta(schema=self.task.name, version=self.task.version, engine=self.engine.name,
                    model=self.engine.model, attempts=self.attempt, errors=self.seen,
                    prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                    latency_ms=(time.perf_counter() - self.start) * 1000,
                    spans=judged.spans if options.spans else None, confidence=confidence,
                    grounded_decoding=self.grounded, adapter=self.adapter.name if self.adapter is not None else None,
                    changed=judged.changed, max_tokens=self.max_tokens, max_tokens_cap=options.max_tokens_cap,
                    bounded=self.bounded, grammar=self.grammar)
        self.outcome = Extraction(data=judged.outcome.value, meta=meta)

    def _bound(self) -> bool:
        """After an output cut at the cap: the next attempt under the schema with its open
        repetitions bounded (`DEFAULT_BOUNDS`); cut again, under the compact schema (`COMPACT_BOUNDS`:
        required properties only, one item, short strings); if the options allow it and an attempt
        is left. False once both were tried."""
        if (not self.options.bound_on_cut or self.compacted or self.schema is None
                or self.attempt >= self.options.max_attempts):
            return False
        schema, added = bound_repetitions(self.schema) if self.bounded is None else (self.schema, {})
        if not added:
            schema, added = bound_repetitions(self.schema, COMPACT_BOUNDS)
            self.compacted = True
            if not added:
                return False
        merged = dict(self.bounded or {})
        for key, count in added.items():
            merged[key] = merged.get(key, 0) + count
        self.schema, self.bounded, self.pending = schema, merged, None
        return True

    def _give_up(self) -> None:
        last = "; ".join(self.seen[-1]) if self.seen else "no attempt made"
        self.outcome = ExtractionFailed(f"{self.task.name}: no valid output after {len(self.seen)} attempt(s): {last}",
                                        attempts=len(self.seen), errors=self.seen,
                                        last_output=shortened(self.last_output))


#: the most of a failed attempt's output an `ExtractionFailed` carries (its start and its end)
LAST_OUTPUT_CHARS: Final = 4000


def shortened(text: str | None, limit: int = LAST_OUTPUT_CHARS) -> str | None:
    """`text` if it has at most `limit` characters, else its start and end (3 to 1) of `limit` in all."""
    if text is None or len(text) <= limit:
        return text
    head = limit * 3 // 4
    return f"{text[:head]} [... {len(text) - limit} characters ...] {text[-(limit - head):]}"


async def _begin(engine: Engine, task: Task[Any], document: str, options: ExtractOptions,
                 feedback: list[str] | None = None, adapter: AdapterRef | None = None,
                 given: Mapping[str, Any] | None = None, given_status: str | None = None,
                 patient: bool = False) -> _Attempts:
    """A document checked and ready for its first attempt: with the `given` schema where it
    compiles, else grounded decoding's constraint built (off the event loop, within its budget)
    where the options ask for it; `patient`: its grammar's compile is waited for (see `Job`)."""
    if not document.strip():
        raise EmptyDocument("the document is empty")
    check_unicode(document)  # a lone surrogate: no tokenizer takes it
    schema: Mapping[str, Any] = task.strict_schema
    grounded: str | None = None
    if given is not None and await _compile_failure(engine, given, patient, base=task.strict_schema) is None:
        return _Attempts(task, document, options, engine, feedback, adapter, given, given_status)
    pending = None
    if options.grounded_for(task):
        constraint, pending = await _grounded_constraint(engine, task, document, patient)
        schema, grounded = constraint.schema, constraint.status
        if not constraint.full:
            state = _Attempts(task, document, options, engine, feedback, adapter, schema, grounded, pending)
            state.options = options.model_copy(update={"require_grounded": True})  # grounded after the fact
            return state
    elif task.candidates_from_names and options.grounded_decoding is None:
        schema = await _offered(engine, task, document, patient)
    return _Attempts(task, document, options, engine, feedback, adapter, schema, grounded)


async def _round(engine: Engine, states: Sequence[_Attempts]) -> None:
    """One engine call for the next attempt of every state; a per-document grammar that does not
    compile in time falls back to the task's grammar (`_Attempts.ungrounded`) and the round is run
    again; a retry takes such a grammar back once it is ready (`_Attempts.reground`)."""
    if retried := [s for s in states if s.pending is not None and s.seen]:
        await asyncio.gather(*(s.reground() for s in retried))
    while True:
        try:
            if len(states) == 1 and states[0].watch is not None:
                results = [await _streamed(engine, states[0])]
            else:
                results = await engine.generate([s.request() for s in states])
        except (GrammarTimeout, SchemaRejected) as exc:
            if states[0].pinned:  # the sent fields' consts cost the grammar: this document decodes without them
                states[0].pin, states[0].pinned, states[0].attempt = False, False, states[0].attempt - 1
                continue
            if not any([s.step_down(exc) for s in states]):
                raise
            continue
        for state, result in zip(states, results, strict=True):
            state.take(result)
        return


async def _streamed(engine: Engine, state: _Attempts) -> GenerationResult:
    """One attempt of a streamed document (`state.watch`): its text goes to the watch as it grows,
    judged by this attempt's gates. A schema with sent fields pinned (`state.pinned`) is derived
    from the one the attempt would have used, and admitted or compiled on its own; a compile past
    the engine's limit drops the pins."""
    watch = state.watch
    assert watch is not None
    unpinned = state.schema
    request = state.request()
    state.pinned = request.schema is not unpinned
    if state.pinned and unpinned is not None and await _compile_failure(engine, request.schema, patient=True,
                                                                        base=unpinned) is not None:
        state.pin = state.pinned = False
        request = replace(request, schema=unpinned)
    watch.gates = FieldGates(system=state.messages[0]["content"], require_grounded=state.options.require_grounded)
    return await generate_streaming(engine, request, watch.on_text)


async def extract_together(engine: Engine, jobs: Sequence[Job], options: ExtractOptions = DEFAULT_OPTIONS,
                           adapter: AdapterRef | None = None) -> list[Extraction[Any] | ExtractionFailed]:
    """Several jobs through the retry loop, every round of attempts in ONE engine call (the
    chunks of a long document batch together on any engine). A job's failure is its
    `ExtractionFailed` in its place; an engine failure raises."""
    states = list(await asyncio.gather(*(_begin(engine, j.task, j.document, options, j.feedback, adapter, j.schema,
                                                j.status, j.patient) for j in jobs)))
    while active := [s for s in states if s.outcome is None]:
        await _round(engine, active)
    return [s.outcome for s in states if s.outcome is not None]


async def extract_one(engine: Engine, task: Task[Any], document: str, options: ExtractOptions = DEFAULT_OPTIONS,
                      adapter: AdapterRef | None = None, watch: FieldStream | None = None) -> Extraction[Any]:
    """One document through the retry loop; every attempt runs with `adapter` (the task's LoRA
    adapter, `extractor.adapters`) when one is given, and streams its text to `watch`, the
    fields it sent pinned, when one is given."""
    state = await _begin(engine, task, document, options, adapter=adapter)
    state.watch = watch
    while state.outcome is None:
        await _round(engine, [state])
    if isinstance(state.outcome, ExtractionFailed):
        raise state.outcome
    return state.outcome
