"""How much document fits one engine call: the model's context, the prompt's own tokens, the
output budget.

Engines with a tokenizer say so through the optional `TokenBudget` capability
(`extractor.engines.base`): their context size and an exact count of a rendered prompt. Others
are measured with `CHARS_PER_TOKEN`, a cautious estimate (number-heavy text such as an invoice is
about 2 characters a token on SmolLM2's tokenizer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extractor.engines.base import Engine, Message, has_token_budget

#: characters a token where the engine cannot count them
CHARS_PER_TOKEN = 2.0
#: the context assumed of an engine that does not say
DEFAULT_CONTEXT = 8192
#: per-message overhead of a chat template, estimated
MESSAGE_OVERHEAD = 8
#: the largest chunk by default: smaller chunks are read more reliably by a small model
DEFAULT_CHUNK_TOKENS = 1024
#: output tokens per token of chunk (a JSON record is longer than the line it was read from)
OUTPUT_PER_INPUT = 2.0
OUTPUT_SLACK = 128
#: the one retry after an output cut at max_tokens doubles the budget: it must still fit
LENGTH_GROWTH = 2


def context_length(engine: Engine) -> int:
    return engine.context_length if has_token_budget(engine) else DEFAULT_CONTEXT


def prompt_tokens(engine: Engine, messages: Sequence[Message]) -> int:
    if has_token_budget(engine):
        return engine.count_prompt_tokens(messages)
    return int(sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * len(messages)


@dataclass(frozen=True)
class ChunkBudget:
    """Tokens of document per chunk, its output budget, and characters per token of this document."""

    chunk_tokens: int
    max_tokens: int
    chars_per_token: float

    @property
    def chunk_chars(self) -> int:
        return max(64, int(self.chunk_tokens * self.chars_per_token))


def chars_per_token(engine: Engine, document: str, sample: int = 8000) -> float:
    """This document's characters per token, measured on its first `sample` characters."""
    if not has_token_budget(engine):
        return CHARS_PER_TOKEN
    text = document[:sample]
    empty = engine.count_prompt_tokens([{"role": "user", "content": ""}])
    tokens = engine.count_prompt_tokens([{"role": "user", "content": text}]) - empty
    return max(1.0, len(text) / max(1, tokens)) * 0.95  # a margin: later parts may be denser


def fits_whole(engine: Engine, messages: Sequence[Message], max_tokens: int) -> bool:
    """Whether the prompt of the whole document and the task's output budget fit the context."""
    return prompt_tokens(engine, messages) + max_tokens <= context_length(engine)


def chunk_budget(engine: Engine, head: Sequence[Message], document: str, *, task_max_tokens: int,
                 wanted_tokens: int | None = None) -> ChunkBudget:
    """The chunk size and output budget such that the prompt head, a chunk and twice its output
    budget (the retry after a cut output) fit the context."""
    context = context_length(engine)
    head_tokens = prompt_tokens(engine, head) + MESSAGE_OVERHEAD
    room = context - head_tokens - OUTPUT_SLACK * LENGTH_GROWTH
    fit = int(room / (1 + LENGTH_GROWTH * OUTPUT_PER_INPUT))
    tokens = max(64, min(fit, wanted_tokens or DEFAULT_CHUNK_TOKENS))
    max_tokens = max(min(task_max_tokens, (context - head_tokens - tokens) // LENGTH_GROWTH),
                     int(tokens * OUTPUT_PER_INPUT) + OUTPUT_SLACK)
    return ChunkBudget(tokens, max_tokens, chars_per_token(engine, document))


def item_tokens(item: Mapping[str, Any]) -> int:
    """The tokens an item's JSON spends besides its values (keys, quotes, braces), estimated."""
    keys = item.get("properties", {})
    return int((sum(len(k) + 6 for k in keys) + 4) / CHARS_PER_TOKEN) + 1


def rows_max_tokens(budget: ChunkBudget, row_chars: int, rows: int, per_item: int, head_tokens: int,
                    context: int) -> int:
    """The output budget of a chunk of `rows` rows (`row_chars` characters): each item as long
    as its row plus its keys, a quarter more, and slack; never more than the context holds with
    the chunk and the regrowth of a cut output (`LENGTH_GROWTH`)."""
    wanted = int((row_chars / budget.chars_per_token + rows * per_item) * 1.25) + OUTPUT_SLACK
    room = (context - head_tokens - int(row_chars / budget.chars_per_token)) // LENGTH_GROWTH
    return max(OUTPUT_SLACK, min(wanted, room))
