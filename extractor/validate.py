"""Validation layer: raw model text -> a validated value, or the error messages.

Three gates, in order: JSON parsing, the strict JSON schema (Draft 2020-12),
and the Pydantic model with its own validators. Messages name the JSON path
so they can be fed back to the model verbatim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

import jsonschema
from pydantic import BaseModel, ValidationError

from .contract import Task

T = TypeVar("T")


@dataclass(frozen=True)
class Valid(Generic[T]):
    value: T


@dataclass(frozen=True)
class Invalid:
    errors: list[str]


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json), format_checker=jsonschema.FormatChecker())


def _path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validate_output(task: Task[Any], text: str, document: str | None = None) -> Valid[Any] | Invalid:
    """Validate `text` for `task`. The document is passed to the model's validators
    as validation context (`info.context["document"]`), so they can check that a
    value really occurs in it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Invalid([f"not valid JSON: {exc.msg} at character {exc.pos}"])
    except (ValueError, RecursionError) as exc:  # a number of 5000 digits, nesting past the stack
        return Invalid([f"not valid JSON: {type(exc).__name__}: {exc}"[:300]])
    schema_errors = sorted(_validator(task.schema_json).iter_errors(data), key=lambda e: list(e.absolute_path))
    if schema_errors:
        return Invalid([f"{_path(e.absolute_path)}: {e.message}" for e in schema_errors[:10]])
    model: type[BaseModel] | None = task.model
    if model is None:
        return Valid(data)
    try:
        return Valid(model.model_validate(data, context={"document": document}))
    except ValidationError as exc:
        return Invalid([
            f"{_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()[:10]
        ])
