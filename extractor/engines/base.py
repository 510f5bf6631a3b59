"""The engine protocol: one async method, a batch in, a batch out.

Engines know nothing of schemas' meaning or of validation: they get chat
messages plus the strict JSON schema to enforce, and return raw text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self, TypedDict, TypeGuard, runtime_checkable


class Message(TypedDict):
    """One chat message, as the prompt builder writes it and engines render it."""

    role: str
    content: str


#: JSON separators of few-shot records; engines that control whitespace emit the same.
JSON_SEPARATORS = (",", ":")
#: llguidance's JSON options for the same compact JSON (no free whitespace, `JSON_SEPARATORS`)
LLGUIDANCE_COMPACT_JSON = {"whitespace_flexible": False, "item_separator": JSON_SEPARATORS[0],
                           "key_separator": JSON_SEPARATORS[1]}
#: the `$defs` entry of grounded decoding's per-document schemas, which holds the document's spans
#: (`extractor.grounding.decoding`); an engine may compile such a schema differently
#: (`extractor.engines.lazy_grammar`)
DOCUMENT_SPAN_DEF = "DocumentSpan"

#: why a row ended: "stop" (the model ended it), "length" (at max_tokens), "grammar" (the grammar
#: library stopped it mid-decoding, past one of its limits: the text is incomplete, and the pipeline
#: retries the document under the task's own schema, `loop._Attempts.take`)
FinishReason = Literal["stop", "length", "grammar"]


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter an engine applies to one request: `name` is what a vLLM server serves it as
    (`--lora-modules NAME=PATH`), `path` the folder with `adapter_config.json` and its weights."""

    name: str
    path: str
    rank: int = 16


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
    #: the LoRA adapter of the request's schema; None: the base model
    adapter: AdapterRef | None = None


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


@dataclass(frozen=True)
class Capacity:
    """What an engine serves best with: requests in flight at once (the service's default
    admission bound, so a batching engine sees full batches), and server processes (more than
    one only where each process is a thin client of a remote engine)."""

    inflight: int = 32
    processes: int = 1


@runtime_checkable
class TokenBudget(Protocol):
    """An optional engine capability: the model's context size and a token count of a prompt.

    Engines that know their tokenizer (`local`, `vllm`) provide it; long documents are cut into
    chunks that fit (`extractor.longdoc`). Others are measured with a characters-per-token estimate.
    """

    context_length: int

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of `messages` rendered with the chat template, generation prompt included."""
        ...


def has_token_budget(engine: object) -> TypeGuard[TokenBudget]:
    """`isinstance(engine, TokenBudget)`, in a fraction of its time: a runtime-checkable protocol's
    `isinstance` looks up every member each call (about 10 us), and the pipeline asks several times
    per document."""
    return hasattr(engine, "count_prompt_tokens") and hasattr(engine, "context_length")


@runtime_checkable
class Engine(Protocol):
    """What every engine provides. `name` and `model` label results.

    `generate` is the whole contract. `aclose` releases what the engine holds (threads, HTTP
    connections, GPU memory); an engine that subclasses `Engine` inherits a no-op `aclose` and
    the async context manager (`async with engine:`), so the one who opens an engine closes it
    the same way whatever the engine.

    Optional: an engine that holds its tokenizer says which strings it reads as special tokens in
    `special_tokens` (a frozenset), and defuses every one of them in the messages it renders
    (engines/special_tokens.py): text in a document or a fed-back output never becomes a token.
    """

    name: str
    model: str

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate one result per request, in order. Raise `EngineError` on failure."""
        ...

    async def prepare(self, schema: Mapping[str, Any]) -> None:
        """Get ready to decode with `schema` without holding up other requests: an engine that
        compiles grammars in-process compiles (and caches) this one here, off its step thread.
        Optional; raise `SchemaRejected` for a schema the engine cannot compile."""
        return None

    def admit(self, schema: Mapping[str, Any]) -> bool:
        """Take `schema` without preparing it, where the engine only *checks* schemas ahead (the
        vLLM engines' compile guard) and the library derived `schema` from one that passed
        `prepare` already: grounded decoding's per-document schemas, the task's schema with its
        strings narrowed to the document's text, bounded in size (`ConstraintBudget`). Checking
        each of them again in one guard child serialised every grounded document behind the
        others. True: taken, later calls with `schema` go straight to the engine, and the caller
        prepares the schema it was derived from before sending it; False (the default): the
        caller prepares `schema` itself. An engine that compiles ahead (`local`) says False."""
        return False

    async def compiler_ready(self) -> None:
        """Return once the engine's grammar compiler has started (a child process that imports
        xgrammar and loads a tokenizer: seconds), so that a compile budget measures the schema's
        compile, not the engine's start-up. Optional."""
        return None

    async def aclose(self) -> None:
        """Release the engine's resources; later calls may fail. Idempotent."""
        return None

    @classmethod
    def capacity(cls, options: Mapping[str, Any]) -> Capacity:
        """The serving defaults of this engine class with these options (before it is built)."""
        return Capacity()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


#: called with the output's text so far as it grows (`TextStreaming`)
OnText = Callable[[str], None]

#: characters that close a JSON value: an engine that streams reports the text at least each
#: time a token holding one of them is generated, which is all a reader of settled fields needs
CLOSING_CHARS = ",}]"


@runtime_checkable
class TextStreaming(Protocol):
    """An optional engine capability: one request's output text as it is generated.

    `generate_streaming` returns what `generate` would for the request, and meanwhile calls
    `on_text` on the caller's event loop with the text so far: at least whenever a generated
    token holds one of `CLOSING_CHARS` (a value of the JSON may have just closed), and once with
    the whole text before it returns."""

    async def generate_streaming(self, request: GenerationRequest, on_text: OnText) -> GenerationResult:
        ...


def has_text_streaming(engine: object) -> TypeGuard[TextStreaming]:
    """`isinstance(engine, TextStreaming)`, as cheaply as `has_token_budget`."""
    return hasattr(engine, "generate_streaming")


async def generate_streaming(engine: Engine, request: GenerationRequest, on_text: OnText) -> GenerationResult:
    """One request with its text reported as it grows where the engine streams (`TextStreaming`),
    else all at once when it is done."""
    if has_text_streaming(engine):
        return await engine.generate_streaming(request, on_text)
    (result,) = await engine.generate([request])
    on_text(result.text)
    return result
