"""The extraction loop: generate, validate, feed the errors back, repeat.

Never returns an unvalidated value: it returns an `Extraction` whose data
passed every gate, or raises `ExtractionFailed` with the errors of every
attempt. An output cut at `max_tokens` is a failure; the next attempt gets
a doubled budget (once), then the loop gives up on length. The first attempt
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
request reaches the engine (`Engine.prepare`, within `compile_timeout_s`); past either budget
the call decodes with the task's schema and checks its values against the document
(`require_grounded`) instead, and `meta.grounded_decoding` says which it was
(`extractor.grounding.constraint`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from extractor.contracts.contract import Task
from extractor.engines.base import AdapterRef, Engine, GenerationRequest, GenerationResult, Message
from extractor.errors import EmptyDocument, ExtractionFailed, GrammarTimeout, SchemaRejected
from extractor.grounding.confidence import field_confidence
from extractor.grounding.constraint import DocumentConstraint, default_builder, fallback
from extractor.grounding.spans import Span, ground_record, ungrounded_errors
from extractor.pipeline.documents import check_unicode
from extractor.pipeline.injection import echo_errors
from extractor.pipeline.options import DEFAULT_OPTIONS, ExtractOptions
from extractor.pipeline.prompt import build_messages, feedback_message
from extractor.pipeline.result import Extraction, Meta
from extractor.pipeline.validate import Invalid, validate_output


@dataclass(frozen=True)
class _Judged:
    outcome: Any  # a validated value, or Invalid
    spans: dict[str, list[Span]] | None = None
    cut: bool = False  # finished at max_tokens


def _judge(task: Task[Any], result: GenerationResult, document: str, system: str, options: ExtractOptions,
           max_tokens: int) -> _Judged:
    """Every gate one output must pass: complete, valid, not echoing the instructions, grounded
    when that is required."""
    if result.finish_reason == "length":
        return _Judged(Invalid([f"output cut off at max_tokens={max_tokens} before the JSON was complete"]), cut=True)
    outcome = validate_output(task, result.text, document)
    if not isinstance(outcome, Invalid) and (echoes := echo_errors(result.text, system, document)):
        outcome = Invalid(echoes)  # a field repeats the instructions (a prompt injection): refused, retried
    spans = None
    if not isinstance(outcome, Invalid) and (options.spans or options.require_grounded):
        data = outcome.value.model_dump(mode="json") if isinstance(outcome.value, BaseModel) else outcome.value
        spans = ground_record(data, document)
        errors = ungrounded_errors(data, task.strict_schema, spans) if options.require_grounded else []
        if errors:
            outcome = Invalid(errors)
    return _Judged(outcome, spans)


async def _grounded_constraint(engine: Engine, task: Task[Any], document: str) -> DocumentConstraint:
    """The document's constraint, its grammar ready in an engine that compiles in-process; a
    fallback to the task's schema past the budget (see `extractor.grounding.constraint`)."""
    builder = default_builder()
    constraint = await builder.constraint(task.strict_schema, document)
    prepare = getattr(engine, "prepare", None)
    if not constraint.full or prepare is None:
        return constraint
    try:
        # shielded: a compile that outlives the budget still lands in the engine's cache
        await asyncio.wait_for(asyncio.shield(prepare(constraint.schema)), builder.budget.compile_timeout_s)
    except TimeoutError:
        return fallback(task.strict_schema, "compile_timeout")
    except SchemaRejected:
        return fallback(task.strict_schema, "compile_error")
    return constraint


async def extract_one(engine: Engine, task: Task[Any], document: str, options: ExtractOptions = DEFAULT_OPTIONS,
                      adapter: AdapterRef | None = None) -> Extraction[Any]:
    """One document through the retry loop; every attempt runs with `adapter` (the task's LoRA
    adapter, `extractor.adapters`) when one is given."""
    if not document.strip():
        raise EmptyDocument("the document is empty")
    check_unicode(document)  # a lone surrogate: no tokenizer takes it
    start = time.perf_counter()
    messages: list[Message] = build_messages(task, document)
    grounded: str | None = None
    schema: Mapping[str, Any] = task.strict_schema
    if options.grounded_for(task):
        constraint = await _grounded_constraint(engine, task, document)
        schema, grounded = constraint.schema, constraint.status
        if not constraint.full:
            options = options.model_copy(update={"require_grounded": True})  # grounded after the fact
    max_tokens = task.max_tokens
    grew = False
    seen: list[list[str]] = []
    prompt_tokens = completion_tokens = 0
    for attempt in range(1, options.max_attempts + 1):
        # any retry samples a little: greedy decoding would walk the same path again
        # (into the same validation error, or the same loop up to max_tokens)
        resampling = bool(seen)
        request = GenerationRequest(messages=tuple(messages), schema=schema, max_tokens=max_tokens,
                                    temperature=options.retry_temperature if resampling else 0.0,
                                    seed=options.seed + attempt - 1, logprobs=options.logprobs or options.confidence,
                                    repetition_penalty=options.repetition_penalty, adapter=adapter)
        try:
            (result,) = await engine.generate([request])
        except GrammarTimeout:
            if schema is task.strict_schema:
                raise
            # this document's own grammar (grounded decoding) is too large to compile in time:
            # the task's grammar, compiled once for every document, takes over
            schema = task.strict_schema
            (result,) = await engine.generate([replace(request, schema=schema)])
        prompt_tokens += result.prompt_tokens
        completion_tokens += result.completion_tokens
        judged = _judge(task, result, document, messages[0]["content"], options, max_tokens)
        if isinstance(judged.outcome, Invalid):
            seen.append(judged.outcome.errors)
            if judged.cut:
                if grew:
                    break
                max_tokens *= options.length_growth
                grew = True
                continue
            messages = [*messages, {"role": "assistant", "content": result.text}, feedback_message(judged.outcome.errors)]
            continue
        confidence = None
        if options.confidence and result.logprobs is not None:
            confidence = field_confidence(result.text, result.logprobs)
        meta = Meta(schema=task.name, version=task.version, engine=engine.name, model=engine.model,
                    attempts=attempt, errors=seen, prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens, latency_ms=(time.perf_counter() - start) * 1000,
                    spans=judged.spans if options.spans else None, confidence=confidence,
                    grounded_decoding=grounded,
                    adapter=adapter.name if adapter is not None else None)
        return Extraction(data=judged.outcome.value, meta=meta)
    last = "; ".join(seen[-1]) if seen else "no attempt made"
    raise ExtractionFailed(f"{task.name}: no valid output after {len(seen)} attempt(s): {last}",
                           attempts=len(seen), errors=seen)
