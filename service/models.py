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


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="the document, as text")
    options: ExtractOptions = Field(default_factory=ExtractOptions)


class Tokens(BaseModel):
    prompt: int
    completion: int


class ResponseMeta(BaseModel):
    attempts: int = Field(description="engine generations it took (1 = the first output validated)")
    errors: list[list[str]] = Field(description="per failed attempt, the validation errors fed back")
    latency_ms: float = Field(description="extraction time: every attempt, generation and validation")
    tokens: Tokens
    engine: str
    model: str
    engine_ms: float = Field(description="time spent waiting on the engine, all attempts")
    queue_ms: float = Field(description="time spent waiting for an in-flight slot")


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
