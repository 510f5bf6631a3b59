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
    #: the token budget of the attempt that succeeded, and the most a cut output is retried with
    max_tokens: int = 0
    max_tokens_cap: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `meta`; `spans` and `confidence` only when they were asked for."""
        out = asdict(self)
        spans, confidence = out.pop("spans"), out.pop("confidence")
        out["tokens"] = {"prompt": out.pop("prompt_tokens"), "completion": out.pop("completion_tokens")}
        out["latency_ms"] = round(self.latency_ms, 1)
        if spans is not None:
            out["spans"] = spans
        if confidence is not None:
            out["confidence"] = {path: float(f"{p:.4g}") for path, p in confidence.items()}
        return out


@dataclass(frozen=True)
class Extraction(Generic[T]):
    data: T
    meta: Meta

    def data_dict(self) -> Any:
        return self.data.model_dump(mode="json") if isinstance(self.data, BaseModel) else self.data

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI prints and the service returns."""
        meta = self.meta.to_dict()
        return {"schema": meta.pop("schema"), "version": meta.pop("version"), "data": self.data_dict(), "meta": meta}
