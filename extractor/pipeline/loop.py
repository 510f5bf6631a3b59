"""The extraction loop: generate, validate, feed the errors back, repeat.

Never returns an unvalidated value: it returns an `Extraction` whose data
passed every gate, or raises `ExtractionFailed` with the errors of every
attempt. An output cut at `max_tokens` is a failure; the next attempt gets
the budget grown by `length_growth`, up to `max_tokens_cap` (both in `meta`),
then the loop gives up on length. The first attempt
is greedy; retries sample at `retry_temperature` with a per-attempt seed, so
they do not walk greedy decoding's path into the same error again.

Asked for, a valid output also gets its values' spans in the document (`spans`, see
`grounding`) and per-field confidence from the engine's token logprobs (`confidence`, see
`confidence`); `require_grounded` makes a free-text value that occurs nowhere in the document a
validation error like any other: fed back, retried, and in `ExtractionFailed` if it persists.
`grounded_decoding` goes further, before the fact: the engine gets a per-document schema whose
free-text strings and numbers can only take values that occur in the document
(`document_constraint`); validation still checks against the task's own strict schema.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from extractor.contracts.contract import Task
from extractor.engines.base import Engine, GenerationRequest, GenerationResult, Message
from extractor.errors import EmptyDocument, ExtractionFailed
from extractor.grounding.confidence import field_confidence
from extractor.grounding.decoding import constrain_to_document
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


async def extract_one(engine: Engine, task: Task[Any], document: str, options: ExtractOptions = DEFAULT_OPTIONS) -> Extraction[Any]:
    if not document.strip():
        raise EmptyDocument("the document is empty")
    check_unicode(document)  # a lone surrogate: no tokenizer takes it
    start = time.perf_counter()
    messages: list[Message] = build_messages(task, document)
    schema = constrain_to_document(task.strict_schema, document) if options.grounded_for(task) else task.strict_schema
    max_tokens = min(task.max_tokens, options.max_tokens_cap)
    seen: list[list[str]] = []
    prompt_tokens = completion_tokens = 0
    for attempt in range(1, options.max_attempts + 1):
        # any retry samples a little: greedy decoding would walk the same path again
        # (into the same validation error, or the same loop up to max_tokens)
        resampling = bool(seen)
        request = GenerationRequest(messages=tuple(messages), schema=schema, max_tokens=max_tokens,
                                    temperature=options.retry_temperature if resampling else 0.0,
                                    seed=options.seed + attempt - 1, logprobs=options.logprobs or options.confidence,
                                    repetition_penalty=options.repetition_penalty)
        (result,) = await engine.generate([request])
        prompt_tokens += result.prompt_tokens
        completion_tokens += result.completion_tokens
        judged = _judge(task, result, document, messages[0]["content"], options, max_tokens)
        if isinstance(judged.outcome, Invalid):
            seen.append(judged.outcome.errors)
            if judged.cut:
                if max_tokens >= options.max_tokens_cap or options.length_growth == 1:
                    break
                max_tokens = min(max_tokens * options.length_growth, options.max_tokens_cap)
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
                    max_tokens=max_tokens, max_tokens_cap=options.max_tokens_cap)
        return Extraction(data=judged.outcome.value, meta=meta)
    last = "; ".join(seen[-1]) if seen else "no attempt made"
    raise ExtractionFailed(f"{task.name}: no valid output after {len(seen)} attempt(s): {last}",
                           attempts=len(seen), errors=seen)
