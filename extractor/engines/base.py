"""The engine protocol: one async method, a batch in, a batch out.

Engines know nothing of schemas' meaning or of validation: they get chat
messages plus the strict JSON schema to enforce, and return raw text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..prompt import Message

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationRequest:
    messages: Sequence[Message]
    schema: Mapping[str, Any]
    max_tokens: int
    temperature: float = 0.0
    seed: int = 0
    logprobs: bool = False
    #: >1 discourages tokens already generated (as vLLM's and HF's repetition_penalty)
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = field(default=None)


@runtime_checkable
class Engine(Protocol):
    """What every engine provides. `name` and `model` label results."""

    name: str
    model: str

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate one result per request, in order. Raise `EngineError` on failure."""
        ...
