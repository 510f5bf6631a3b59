"""What an extraction returns: the typed value plus how it was obtained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from extractor.grounding.spans import Span

T = TypeVar("T")


@dataclass(frozen=True)
class Meta:
    schema: str
    version: str
    engine: str
    model: str
    attempts: int
    errors: list[list[str]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    #: field path -> where its value occurs in the document (`spans=True`; `extractor.grounding.spans`)
    spans: dict[str, list[Span]] | None = None
    #: field path -> probability of its value's tokens (`confidence=True`, engines with logprobs)
    confidence: dict[str, float] | None = None
    #: with grounded decoding: "full" (the per-document constraint), or "fallback:<reason>" (decoded
    #: with the task's schema, values checked against the document; `extractor.grounding.constraint`)
    grounded_decoding: str | None = None
    #: the LoRA adapter the record was generated with (None: the base model)
    adapter: str | None = None
    #: a chunked document (`extractor.longdoc`): chunks, passes, merge conflicts, completeness
    long: dict[str, Any] | None = None

    #: field path -> what the model wrote, for each value a validator dropped (made null) or
    #: changed (`validator_changes`): the e-mail not found in the document, for one
    changed: dict[str, Any] | None = None
    #: the token budget of the attempt that succeeded, and the most a cut output is retried with
    max_tokens: int = 0
    max_tokens_cap: int = 0
    #: keyword -> how many upper bounds were added: the record was decoded after an output cut at
    #: the cap, under the schema with its open repetitions bounded (`extractor.contracts.bounds`)
    bounded: dict[str, int] | None = None
    #: None: decoded under the schema's full grammar; "validate-only:<reason>": the engine refused
    #: the grammar ("refused") or could not compile it in time ("compile_timeout"), so the record was
    #: decoded under the schema's skeleton and validated against the schema afterwards
    #: (`ExtractOptions.grammar_fallback`, `extractor.contracts.prepare.loose_schema`)
    grammar: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `meta`; `spans`, `confidence`, `grounded_decoding`, `adapter` and `long`
        only when they apply, `changed` only when a validator dropped or changed a value, `bounded`
        only when the record was decoded under bounded repetitions, `grammar` only when it was
        decoded under the schema's skeleton."""
        out = asdict(self)
        spans, confidence, adapter, long = out.pop("spans"), out.pop("confidence"), out.pop("adapter"), out.pop("long")
        changed, bounded, grammar = out.pop("changed"), out.pop("bounded"), out.pop("grammar")
        if out["grounded_decoding"] is None:
            del out["grounded_decoding"]
        out["tokens"] = {"prompt": out.pop("prompt_tokens"), "completion": out.pop("completion_tokens")}
        out["latency_ms"] = round(self.latency_ms, 1)
        if adapter is not None:
            out["adapter"] = adapter
        if spans is not None:
            out["spans"] = spans
        if confidence is not None:
            out["confidence"] = {path: float(f"{p:.4g}") for path, p in confidence.items()}
        if long is not None:
            out["long"] = long
        if changed:
            out["changed"] = changed
        if bounded:
            out["bounded"] = bounded
        if grammar is not None:
            out["grammar"] = grammar
        return out


@dataclass(frozen=True)
class Extraction(Generic[T]):
    data: T
    meta: Meta

    def data_dict(self) -> Any:
        """The data as JSON values (a list of records with `many`)."""
        if isinstance(self.data, list):
            return [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in self.data]
        return self.data.model_dump(mode="json") if isinstance(self.data, BaseModel) else self.data

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI prints and the service returns."""
        meta = self.meta.to_dict()
        return {"schema": meta.pop("schema"), "version": meta.pop("version"), "data": self.data_dict(), "meta": meta}
