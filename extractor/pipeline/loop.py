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
(`document_constraint`); validation still checks against the task's own strict schema.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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

    def __post_init__(self) -> None:
        if not self.document.strip():
            raise EmptyDocument("the document is empty")
        check_unicode(self.document)  # a lone surrogate: no tokenizer takes it
        self.start = time.perf_counter()
        self.messages: list[Message] = build_messages(self.task, self.document)
        if self.feedback:
            self.messages.append(feedback_message(self.feedback))
        self.schema = (constrain_to_document(self.task.strict_schema, self.document)
                       if self.options.grounded_for(self.task) else self.task.strict_schema)
        self.max_tokens = self.task.max_tokens
        self.grew = False
        self.seen: list[list[str]] = []
        self.attempt = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.outcome: Extraction[Any] | ExtractionFailed | None = None

    def request(self) -> GenerationRequest:
        # any retry samples a little: greedy decoding would walk the same path again
        # (into the same validation error, or the same loop up to max_tokens)
        self.attempt += 1
        options = self.options
        return GenerationRequest(messages=tuple(self.messages), schema=self.schema, max_tokens=self.max_tokens,
                                 temperature=options.retry_temperature if (self.seen or self.feedback) else 0.0,
                                 seed=options.seed + self.attempt - 1, logprobs=options.logprobs or options.confidence,
                                 repetition_penalty=options.repetition_penalty)

    def take(self, result: GenerationResult) -> None:
        """Judge one engine result; sets `outcome` when the document is done."""
        options = self.options
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        judged = _judge(self.task, result, self.document, self.messages[0]["content"], options, self.max_tokens)
        if isinstance(judged.outcome, Invalid):
            self.seen.append(judged.outcome.errors)
            if judged.cut:
                if self.grew:
                    self._give_up()
                    return
                self.max_tokens *= options.length_growth
                self.grew = True
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
                    spans=judged.spans if options.spans else None, confidence=confidence)
        self.outcome = Extraction(data=judged.outcome.value, meta=meta)

    def _give_up(self) -> None:
        last = "; ".join(self.seen[-1]) if self.seen else "no attempt made"
        self.outcome = ExtractionFailed(f"{self.task.name}: no valid output after {len(self.seen)} attempt(s): {last}",
                                        attempts=len(self.seen), errors=self.seen)


async def extract_together(engine: Engine, jobs: Sequence[tuple[Task[Any], str, list[str] | None]],
                           options: ExtractOptions = DEFAULT_OPTIONS) -> list[Extraction[Any] | ExtractionFailed]:
    """Several (task, document, feedback) jobs through the retry loop, every round of attempts
    in ONE engine call (the chunks of a long document batch together on any engine). A job's
    failure is its `ExtractionFailed` in its place; an engine failure raises."""
    states = [_Attempts(task, document, options, engine, feedback) for task, document, feedback in jobs]
    while active := [s for s in states if s.outcome is None]:
        results = await engine.generate([s.request() for s in active])
        for state, result in zip(active, results, strict=True):
            state.take(result)
    return [s.outcome for s in states if s.outcome is not None]


async def extract_one(engine: Engine, task: Task[Any], document: str, options: ExtractOptions = DEFAULT_OPTIONS) -> Extraction[Any]:
    state = _Attempts(task, document, options, engine)
    while state.outcome is None:
        (result,) = await engine.generate([state.request()])
        state.take(result)
    if isinstance(state.outcome, ExtractionFailed):
        raise state.outcome
    return state.outcome
