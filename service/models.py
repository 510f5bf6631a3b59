"""The wire models: the request body, the per-schema typed responses, the problem document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from extractor.contract import Task


class ExtractOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_retries: int | None = Field(default=None, ge=0, le=5,
                                    description="retries after a failed validation (default: the server's)")
    timeout_s: float | None = Field(default=None, gt=0, le=3600,
                                    description="deadline for this request in seconds, queue wait included; "
                                                "capped at the server's deadline")
    spans: bool | None = Field(default=None, description="add meta.spans: where each string and number of the record "
                                                         "occurs in the document")
    confidence: bool | None = Field(default=None, description="add meta.confidence: per-field probability from the "
                                                              "engine's token logprobs (engines that return them)")
    require_grounded: bool | None = Field(default=None, description="a free-text value that occurs nowhere in the "
                                                                    "document fails validation and is retried")
    grounded_decoding: bool | None = Field(default=None, description="decode free-text strings and numbers only as "
                                                                     "values that occur in the document (default: "
                                                                     "the schema's own setting)")


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="the document, as text")
    options: ExtractOptions = Field(default_factory=ExtractOptions)


class Tokens(BaseModel):
    prompt: int
    completion: int


class Span(BaseModel):
    start: int = Field(description="first character of the value in the document (code point offset)")
    end: int = Field(description="one past its last character")
    match: Literal["exact", "normalized", "fuzzy"]


class ResponseMeta(BaseModel):
    attempts: int = Field(description="engine generations it took (1 = the first output validated)")
    errors: list[list[str]] = Field(description="per failed attempt, the validation errors fed back")
    latency_ms: float = Field(description="extraction time: every attempt, generation and validation")
    tokens: Tokens
    engine: str
    model: str
    engine_ms: float = Field(description="time spent waiting on the engine, all attempts")
    queue_ms: float = Field(description="time spent waiting for an in-flight slot")
    spans: dict[str, list[Span]] | None = Field(
        default=None, description="with options.spans: field path (`name`, `items[0].description`) -> where its value "
                                  "occurs in the document; an empty list: found nowhere")
    confidence: dict[str, float] | None = Field(
        default=None, description="with options.confidence: field path -> probability of its value's tokens")


class Problem(BaseModel):
    """An RFC 9457 problem document; `type` is `urn:extractor:problem:` + `code`."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None
    instance: str | None = None


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_") if part)


def response_model(task: Task[Any]) -> type[BaseModel]:
    """`{"schema", "version", "data", "meta"}` with `data` typed by the task's own model."""
    data_type: Any = task.model if task.model is not None else dict[str, Any]
    name_type: Any = Literal[task.name]
    model: type[BaseModel] = create_model(
        f"{_camel(task.name)}Extraction",
        schema_=(name_type, Field(alias="schema")),
        version=(str, ...),
        data=(data_type, ...),
        meta=(ResponseMeta, ...),
    )
    return model
