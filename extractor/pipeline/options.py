"""`ExtractOptions`: every knob of one extraction, declared once.

The library, the SDK client, the service's request body, the CLI flags and the eval all take
this one value. Options merge like pydantic-ai's settings: an extractor's defaults, then a
call's overrides, where only the fields an override sets explicitly win:

    defaults = ExtractOptions(max_retries=1)
    defaults.merged({"spans": True})          # max_retries=1, spans=True
    defaults.merged(ExtractOptions(spans=True))   # the same: unset fields of the override keep the defaults

The fields marked `exposed` are the ones users choose per request; `extractor.cli.flags` turns
them into CLI flags and `service.models` into the request body's `options`, so the three
surfaces cannot disagree (`tests/test_options.py` checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.config import JsonDict

from extractor.errors import InvalidRequest

if TYPE_CHECKING:
    from extractor.contracts.contract import Task

#: documents in flight when many go through one extractor (`Extractor.aiter_many`, `extract run`
#: with several files, `extract eval`, `extract batch`, the SDK client's `extract_many`)
DEFAULT_CONCURRENCY = 64

EXPOSED: JsonDict = {"exposed": True}


class ExtractOptions(BaseModel):
    """How one document is extracted. Frozen; build a changed copy with `merged`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(default=2, ge=0, le=10, json_schema_extra=EXPOSED,
                             description="retries after a failed validation")
    spans: bool = Field(default=False, json_schema_extra=EXPOSED,
                        description="add meta.spans: where each string and number of the record occurs in the document")
    confidence: bool = Field(default=False, json_schema_extra=EXPOSED,
                             description="add meta.confidence: per-field probability from the engine's token logprobs "
                                         "(engines that return them)")
    require_grounded: bool = Field(default=False, json_schema_extra=EXPOSED,
                                   description="a free-text value that occurs nowhere in the document fails validation "
                                               "and is retried")
    grounded_decoding: bool | None = Field(default=None, json_schema_extra=EXPOSED,
                                           description="decode free-text strings and numbers only as values that occur "
                                                       "in the document (default: the schema's own setting, on for "
                                                       "invoice, receipt and job_posting)")
    chunking: Literal["auto", "off"] = Field(default="auto", json_schema_extra=EXPOSED,
                                             description="auto: a document longer than the model's context is cut into "
                                                         "overlapping chunks whose results are merged by source span; "
                                                         "off: refuse it")
    many: bool = Field(default=False, json_schema_extra=EXPOSED,
                       description="extract every record of the schema the document holds (a list), not one")
    passes: int = Field(default=1, ge=1, le=5, json_schema_extra=EXPOSED,
                        description="extraction passes over a chunked document; later passes see only what earlier "
                                    "ones did not take, and add only new spans")
    chunk_tokens: int | None = Field(default=None, ge=64, json_schema_extra=EXPOSED,
                                     description="the most tokens of document in one chunk (default: what fits the "
                                                 "model's context with the prompt and output budget, at most 1024)")
    grammar_fallback: bool = Field(default=True, json_schema_extra=EXPOSED,
                                   description="a raw JSON schema whose grammar the engine refuses or cannot compile "
                                               "in time is decoded under its skeleton instead (meta.grammar says so), "
                                               "every answer still validated against the schema; off: refuse it (422)")
    #: ask the engine for token logprobs even without `confidence`
    logprobs: bool = False
    #: seed of the first attempt; attempt k uses seed + k - 1
    seed: int = 0
    #: budget growth of the one retry after an output cut at max_tokens
    length_growth: int = Field(default=2, ge=1)
    #: the largest budget an output cut at max_tokens is retried with (growing by `length_growth`
    #: each time; reported in `meta.max_tokens_cap`)
    max_tokens_cap: int = Field(default=4096, ge=1)
    #: an output still cut at `max_tokens_cap` (a small model looping: the same item, key or phrase)
    #: gets one more attempt under the schema with its open repetitions bounded
    #: (`extractor.contracts.bounds`; what was bounded is in `meta.bounded`)
    bound_on_cut: bool = True
    #: temperature of the attempts after a validation failure: greedy decoding would repeat the
    #: same mistake, a little sampling explores alternatives
    retry_temperature: float = Field(default=0.7, ge=0.0)
    #: off by default: a penalty also lowers the odds of the JSON's own structural tokens (quotes,
    #: commas), which measurably sends strings running to max_tokens on vLLM
    repetition_penalty: float = Field(default=1.0, gt=0.0)

    @classmethod
    def exposed_fields(cls) -> list[str]:
        """The fields users set per request: CLI flags, the service's request options."""
        return [name for name, f in cls.model_fields.items() if isinstance(f.json_schema_extra, dict)
                and f.json_schema_extra.get("exposed")]

    @classmethod
    def parse(cls, values: Mapping[str, Any] | None) -> ExtractOptions:
        """Options from user input: unknown names and bad values are an `InvalidRequest`."""
        try:
            return cls.model_validate(dict(values or {}))
        except ValidationError as exc:
            errors = [f"$.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
            raise InvalidRequest(f"invalid options: {'; '.join(errors)}", errors=errors) from None

    def merged(self, overrides: ExtractOptions | Mapping[str, Any] | None) -> ExtractOptions:
        """These options with the fields that `overrides` sets explicitly replaced. A mapping's
        `None` values mean "not set" (an omitted CLI flag or request field)."""
        if overrides is None:
            return self
        if isinstance(overrides, ExtractOptions):
            changes = {name: getattr(overrides, name) for name in overrides.model_fields_set}
        else:
            changes = {k: v for k, v in overrides.items() if v is not None}
        if not changes:
            return self
        return type(self).parse({**self.model_dump(), **changes})

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def grounded_for(self, task: Task[Any]) -> bool:
        """Whether a document of `task` is decoded grounded: these options' choice, else the task's."""
        return task.grounded_decoding if self.grounded_decoding is None else self.grounded_decoding


DEFAULT_OPTIONS = ExtractOptions()


def split_option_keywords(keywords: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments -> (the ones naming `ExtractOptions` fields, the rest): how `Extractor`
    tells its options from its engine's."""
    fields = ExtractOptions.model_fields
    ours = {k: v for k, v in keywords.items() if k in fields}
    return ours, {k: v for k, v in keywords.items() if k not in fields}
