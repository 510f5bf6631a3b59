"""The wire models: the request body, the per-schema typed responses, the problem document."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from extractor.contracts.contract import Task
from extractor.pipeline.options import ExtractOptions


def _request_options() -> type[BaseModel]:
    """The body's `options`: every exposed `ExtractOptions` field, each optional (an omitted one
    keeps the server's default), plus this request's own deadline. Generated, so the library, the
    CLI flags and the request body cannot disagree."""
    fields: dict[str, Any] = {}
    for name in ExtractOptions.exposed_fields():
        info = ExtractOptions.model_fields[name]
        annotation: Any = info.annotation | None  # type: ignore[operator]
        if info.metadata:  # the field's bounds (ge/le) hold for the request too
            annotation = Annotated[annotation, *info.metadata]
        fields[name] = (annotation,
                        Field(default=None, description=f"{info.description} (default: the server's)"))
    fields["timeout_s"] = (float | None, Field(default=None, gt=0, le=3600,
                                               description="deadline for this request in seconds, queue wait included; "
                                                           "capped at the server's deadline"))
    model: type[BaseModel] = create_model("RequestOptions", __config__=ConfigDict(extra="forbid"), **fields)
    return model


if TYPE_CHECKING:  # the type checker sees a model; the real one is generated
    RequestOptions = BaseModel
else:
    RequestOptions = _request_options()


def extract_options(options: BaseModel) -> dict[str, Any]:
    """The `ExtractOptions` overrides a request's `options` sets (its deadline is the service's own)."""
    return options.model_dump(exclude_none=True, exclude={"timeout_s"})


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="the document, as text")
    options: RequestOptions = Field(default_factory=RequestOptions)


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
    adapter: str | None = Field(default=None, description="the LoRA adapter of this schema the record was generated "
                                                         "with (EXTRACTOR_ADAPTERS); absent: the base model")
    engine_ms: float = Field(description="time spent waiting on the engine, all attempts")
    queue_ms: float = Field(description="time spent waiting for an in-flight slot")
    spans: dict[str, list[Span]] | None = Field(
        default=None, description="with options.spans: field path (`name`, `items[0].description`) -> where its value "
                                  "occurs in the document; an empty list: found nowhere")
    confidence: dict[str, float] | None = Field(
        default=None, description="with options.confidence: field path -> probability of its value's tokens")
    grounded_decoding: str | None = Field(
        default=None, description="with grounded decoding: `full` (decoded under the per-document constraint), or "
                                  "`fallback:<reason>` (past its size or time budget: decoded with the schema, values "
                                  "checked against the document)")
    long: dict[str, Any] | None = Field(
        default=None, description="a chunked document: chunks, passes, merge conflicts (field, values, chosen "
                                  "value, rule), list completeness, chunks failed, retried or re-run with a larger "
                                  "output budget")
    changed: dict[str, Any] | None = Field(
        default=None, description="field path -> what the model wrote, for each value a validator dropped (made "
                                  "null) or changed; absent when none was")
    max_tokens: int | None = Field(default=None, description="the token budget of the attempt that succeeded")
    max_tokens_cap: int | None = Field(default=None, description="the most an output cut at max_tokens is retried with")
    bounded: dict[str, int] | None = Field(
        default=None, description="keyword -> upper bounds added: after an output cut at the cap the record was "
                                  "decoded with the schema's open repetitions bounded (arrays, open objects, free "
                                  "strings); absent when it was not")


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
