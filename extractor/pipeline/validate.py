"""Validation layer: raw model text -> a validated value, or the error messages.

Three gates, in order: JSON parsing, the strict JSON schema (Draft 2020-12),
and the Pydantic model with its own validators; a raw-schema task instead has
its answer unwrapped (a root that is not an object) and validated against the
user's ORIGINAL schema, in the draft it declares, since the grammar schema
leaves some keywords (`not`, `if`, `uniqueItems` ...) to this check. Messages name the JSON path
so they can be fed back to the model verbatim.

The schema gate first asks `jsonschema_rs` (Rust, about 100x faster per
record) whether the value is valid, formats included; only a value it refuses
goes through `jsonschema`, whose messages are the ones fed back and whose
verdict stands. On batches of short records the Python validator was the
largest share of the library's own CPU time per document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

import jsonschema
import jsonschema_rs
from pydantic import BaseModel, ValidationError

from extractor.contracts.contract import Task
from extractor.grounding.fieldpath import field_path, leaves

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


@lru_cache(maxsize=256)
def _fast_validator(schema_json: str) -> jsonschema_rs.Validator | None:
    """The Rust validator of a schema, or None where it cannot build one (then `jsonschema` alone decides)."""
    try:
        return jsonschema_rs.validator_for(json.loads(schema_json), validate_formats=True)
    except Exception:  # a schema the Rust crate does not take is still validated, in Python
        return None


@lru_cache(maxsize=256)
def _original_validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@lru_cache(maxsize=256)
def _fast_original_validator(schema_json: str) -> jsonschema_rs.Validator | None:
    try:
        return jsonschema_rs.validator_for(json.loads(schema_json), validate_formats=True)
    except Exception:  # a schema the Rust crate does not take (remote refs ...) is validated in Python
        return None


def original_errors(schema_json: str, data: Any) -> list[str]:
    """Messages for what in `data` breaks the user's own schema (its declared draft); [] when valid.

    A part of the schema no validator can check here (a remote `$ref`, a regex Python does not
    read) is skipped rather than failing every answer."""
    fast = _fast_original_validator(schema_json)
    if fast is not None:
        try:
            if fast.is_valid(data):
                return []
        except Exception:
            pass
    try:
        errors = sorted(_original_validator(schema_json).iter_errors(data), key=lambda e: list(e.absolute_path))
    except Exception:  # unresolvable remote references, regexes `re` cannot compile
        return []
    return [f"{_path(e.absolute_path)}: {e.message}"[:500] for e in errors[:10]]


def schema_errors(schema_json: str, data: Any) -> list[str]:
    """Messages for what in `data` breaks the schema, by JSON path; [] when it is valid."""
    fast = _fast_validator(schema_json)
    if fast is not None and fast.is_valid(data):
        return []
    errors = sorted(_validator(schema_json).iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors[:10]]


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
    errors = schema_errors(task.schema_json, data)
    if errors:
        return Invalid(errors)
    if task.prepared is not None and task.original_schema_json is not None:
        value = task.prepared.finish(data)
        errors = original_errors(task.original_schema_json, value)
        return Invalid(errors) if errors else Valid(value)
    model: type[BaseModel] | None = task.model
    if model is None:
        return Valid(data)
    try:
        return Valid(model.model_validate(data, context={"document": document}))
    except ValidationError as exc:
        return Invalid([
            f"{_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()[:10]
        ])


@lru_cache(maxsize=256)
def _without_root_required(schema_json: str) -> str:
    schema = json.loads(schema_json)
    if isinstance(schema, dict):
        schema.pop("required", None)
    return json.dumps(schema)


def field_errors(schema_json: str, name: str, value: Any, *, original: bool = False) -> list[str]:
    """Messages for what the top-level field `name` holding `value` breaks in the schema (the
    strict one; `original`: the user's own, in its draft), the other fields left out: errors at
    `$.name` or below it only. For a field streamed before the record is whole (`pipeline.streaming`)."""
    partial = _without_root_required(schema_json)
    errors = original_errors(partial, {name: value}) if original else schema_errors(partial, {name: value})
    own = f"$.{name}"
    return [e for e in errors if e.startswith(own) and e[len(own):len(own) + 1] in (":", ".", "[")]


def label_errors(task: Task[Any], expected: dict[str, Any], document: str | None = None) -> list[str]:
    """Why a label (`expected`, an evaluation's partial record) is refused for `document`; [] when
    it is accepted. A top-level field the label leaves out or gives as `null` is not checked (it is
    unlabeled, or "not in the document", whatever the schema requires); every value it gives must
    pass the same gates as a model output (the strict schema, then the model's validators)."""
    given = {k: v for k, v in expected.items() if v is not None}
    schema = dict(task.strict_schema)
    if isinstance(schema.get("required"), list):
        schema["required"] = [name for name in schema["required"] if name in given]
    errors = schema_errors(json.dumps(schema, separators=(",", ":")), given)
    if errors:
        return errors
    model: type[BaseModel] | None = task.model
    if model is None:
        return []
    try:
        model.model_validate(given, context={"document": document})
    except ValidationError as exc:
        return [f"{_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()
                if not (err["type"] == "missing" and len(err["loc"]) == 1 and err["loc"][0] not in given)][:10]
    return []


def _same(written: Any, kept: Any) -> bool:
    if isinstance(written, bool) or isinstance(kept, bool):
        return written is kept
    if isinstance(written, int | float) and isinstance(kept, int | float):
        return float(written) == float(kept)
    return bool(written == kept)


def validator_changes(written: Any, validated: Any) -> dict[str, Any]:
    """Field path -> the value the model wrote, for each scalar of `written` (the output's JSON)
    that validation dropped or changed in `validated` (the validated value as JSON): a model's
    validator that nulls an e-mail not found in the document, one that rewrites a value."""
    kept = dict(leaves(validated))
    return {field_path(parts): value for parts, value in leaves(written)
            if parts and value is not None and not _same(value, kept.get(parts))}
