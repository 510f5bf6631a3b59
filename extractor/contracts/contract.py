"""What a task schema is: a Pydantic model plus the metadata extraction needs.

A *contract* is a Pydantic v2 model that subclasses `Contract` and sets its
class variables (name, version, instructions, examples). Plain Pydantic
models and raw JSON Schema files work too; `Task` is the resolved form that
the rest of the library consumes, whatever the source.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from extractor.contracts.compile import compile_strict_schema, estimate_max_tokens
from extractor.contracts.prepare import PreparedSchema, SchemaReport, loose_schema, prepare_schema
from extractor.errors import SchemaRejected

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class Example:
    """One few-shot example: a document and the record expected from it."""

    document: str
    record: dict[str, Any]


class Contract(BaseModel):
    """Base class for task schemas.

    Subclasses set `name`, `version`, `instructions` and optionally `examples`
    as class variables; field descriptions come from `Field(description=...)`.
    """

    contract_name: ClassVar[str] = ""
    contract_version: ClassVar[str] = "1"
    instructions: ClassVar[str] = ""
    examples: ClassVar[tuple[Example, ...]] = ()
    #: the contract's values are copied from the document: decode its strings and numbers only
    #: as values the document prints (`document_constraint`) unless a call says otherwise
    grounded_decoding: ClassVar[bool] = False
    #: how a long document's chunks that disagree on a top-level field are merged, per field:
    #: "first", "last", "nearest:KEYWORD" (the value printed nearest after KEYWORD) or "raise";
    #: unnamed fields take "first" (`extractor.longdoc.merge`)
    merge_rules: ClassVar[dict[str, str]] = {}

    @classmethod
    def field_candidates(cls, document: str) -> Mapping[str, Sequence[object]]:
        """The contract's own rules for where its fields sit: ordered candidate values per
        top-level field (best first), which grounded decoding offers instead of every span of the
        document (`extractor.grounding.candidates`). A contract overrides it; none by default."""
        return {}


DEFAULT_INSTRUCTIONS = "Extract the fields of the schema from the document."
#: a raw schema file is read whole: past this size it is refused unread (its JSON may be indented)
MAX_SCHEMA_FILE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Task(Generic[ModelT]):
    """A compiled, ready-to-run extraction task."""

    name: str
    version: str
    instructions: str
    strict_schema: dict[str, Any]
    max_tokens: int
    model: type[ModelT] | None = None
    examples: tuple[Example, ...] = field(default=())
    #: grounded decoding when a call does not choose (`Contract.grounded_decoding`,
    #: `x-grounded-decoding` of a raw schema)
    grounded_decoding: bool = False
    #: per top-level field, how chunks that disagree are merged (`Contract.merge_rules`,
    #: `x-merge-rules` of a raw schema)
    merge_rules: Mapping[str, str] = field(default_factory=dict)
    #: ordered candidate values per field for grounded decoding (`Contract.field_candidates`)
    field_candidates: Callable[[str], Mapping[str, Sequence[object]]] | None = None
    #: a plain model's: the fields its property names type take their candidates
    #: (`extractor.grounding.field_kinds`), under plain decoding too unless a call chooses
    #: `grounded_decoding` itself
    candidates_from_names: bool = False
    #: a raw schema's preparation: the user's ORIGINAL schema (every record is validated against
    #: it after the grammar schema), how to unwrap a wrapped root, and the keyword report; None
    #: for Pydantic contracts, which keep their typed strict schema
    prepared: PreparedSchema | None = None

    @cached_property
    def schema_json(self) -> str:
        """The strict schema as compact JSON (computed once: a task's schema is never changed)."""
        return json.dumps(self.strict_schema, separators=(",", ":"))

    @cached_property
    def original_schema_json(self) -> str | None:
        """The user's own schema as compact JSON (raw-schema tasks), else None."""
        if self.prepared is None:
            return None
        return json.dumps(self.prepared.original, separators=(",", ":"))

    @property
    def report(self) -> SchemaReport | None:
        """What the grammar enforces, what is only validated, what is ignored (raw-schema tasks)."""
        return self.prepared.report if self.prepared is not None else None


MERGE_RULES = ("first", "last", "raise")


def check_merge_rules(rules: dict[Any, Any], where: str) -> dict[str, str]:
    """`rules` if every one is "first", "last", "raise" or "nearest:KEYWORD"; else `SchemaRejected`."""
    for name, rule in rules.items():
        ok = isinstance(rule, str) and (rule in MERGE_RULES or (rule.startswith("nearest:") and len(rule) > 8))
        if not (isinstance(name, str) and ok):
            raise SchemaRejected(f"{where}.{name}", f"unknown merge rule {rule!r}: one of first, last, raise, "
                                                    "nearest:KEYWORD")
    return dict(rules)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def task_from_model(model: type[ModelT]) -> Task[ModelT]:
    """Resolve a Pydantic model (a `Contract` or a plain `BaseModel`) into a Task."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"expected a Pydantic model class, got {model!r}")
    strict = compile_strict_schema(model.model_json_schema())
    if issubclass(model, Contract):
        name = model.contract_name or _snake(model.__name__)
        version = model.contract_version
        instructions = model.instructions or DEFAULT_INSTRUCTIONS
        examples = tuple(model.examples)
        grounded = bool(model.grounded_decoding)
        rules = check_merge_rules(dict(model.merge_rules), "merge_rules")
        overridden = any("field_candidates" in vars(c) for c in model.__mro__ if c is not Contract)
        candidates = model.field_candidates if overridden else None
    else:
        rules = {}
        name, version, instructions, examples = _snake(model.__name__), "1", DEFAULT_INSTRUCTIONS, ()
        grounded, candidates = False, None
    for i, ex in enumerate(examples):
        try:
            model.model_validate(ex.record)
        except Exception as exc:
            raise SchemaRejected(f"examples[{i}]", f"example record does not validate: {exc}") from exc
    return Task(
        name=name,
        version=version,
        instructions=instructions,
        strict_schema=strict,
        max_tokens=estimate_max_tokens(strict),
        model=model,
        examples=examples,
        grounded_decoding=grounded,
        merge_rules=rules,
        field_candidates=candidates,
        candidates_from_names=not issubclass(model, Contract),
    )


def task_from_json_schema(schema: Any, *, name: str, version: str | None = None,
                          strict: bool | None = None, close_declared: bool = True) -> Task[BaseModel]:
    """Resolve a raw JSON Schema (already parsed) into a Task with no Pydantic model.

    Any real-world schema is taken (`extractor.contracts.prepare`): any root type, unknown
    keywords as annotations, open objects, `not`/`if`/`uniqueItems` ... validated after decoding.
    Every returned record validates against this ORIGINAL schema. `strict` (or `x-strict: true`
    in the schema) gives the OpenAI-compatible grammar instead: every property written, the
    optional ones as null (the added nulls are dropped again before validation).
    `close_declared` False keeps open the objects that declare properties and leave
    `additionalProperties` out (by default the grammar writes only their declared properties).

    The schema may carry `title`, `description` (used as instructions),
    `x-version`, `x-examples` (a list of `{"document", "record"}`) and
    `x-grounded-decoding` (true: grounded decoding unless a call says otherwise).
    """
    meta = schema if isinstance(schema, dict) else {}
    strict_flag = meta.get("x-strict", False) if strict is None else strict
    if not isinstance(strict_flag, bool):
        raise SchemaRejected("$.x-strict", "must be true or false")
    prepared = prepare_schema(schema, strict=strict_flag, close_declared=close_declared)
    raw_examples = meta.get("x-examples", [])
    if not isinstance(raw_examples, list):
        raise SchemaRejected("$.x-examples", "must be a list of {document, record}")
    examples = []
    for i, ex in enumerate(raw_examples):
        if not (isinstance(ex, dict) and isinstance(ex.get("document"), str) and "record" in ex):
            raise SchemaRejected(f"$.x-examples[{i}]", "must be an object with a string 'document' and a 'record'")
        examples.append(Example(document=ex["document"], record=ex["record"]))
    description = meta.get("description")
    grounded = meta.get("x-grounded-decoding", False)
    if not isinstance(grounded, bool):
        raise SchemaRejected("$.x-grounded-decoding", "must be true or false")
    raw_rules = meta.get("x-merge-rules", {})
    if not isinstance(raw_rules, dict):
        raise SchemaRejected("$.x-merge-rules", "must be an object of field name -> rule")
    rules = check_merge_rules(raw_rules, "$.x-merge-rules")
    return Task(
        name=name,
        version=str(version or meta.get("x-version", "1")),
        instructions=description if isinstance(description, str) and description else DEFAULT_INSTRUCTIONS,
        strict_schema=prepared.schema,
        max_tokens=estimate_max_tokens(prepared.schema),
        model=None,
        examples=tuple(examples),
        grounded_decoding=grounded,
        merge_rules=rules,
        prepared=prepared,
    )


def validate_only(task: Task[BaseModel]) -> Task[BaseModel]:
    """`task` with the validate-only grammar (any bounded JSON object) in place of its grammar schema,
    for a raw schema no grammar backend compiles within its time budget: every answer is still
    validated against the user's ORIGINAL schema and retried with the errors fed back."""
    if task.prepared is None:
        raise ValueError("validate-only grammars are for raw-schema tasks")
    return replace(task, strict_schema=loose_schema(task.prepared))


def task_from_file(path: str | Path, *, strict: bool | None = None) -> Task[BaseModel]:
    """Load a raw JSON Schema file as a Task named after the file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_SCHEMA_FILE_BYTES:
            raise SchemaRejected("$", f"{p} is {size} bytes, more than the limit of {MAX_SCHEMA_FILE_BYTES}")
        schema = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SchemaRejected("$", f"cannot read {p}: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, 5000-digit numbers, nesting past the stack
        raise SchemaRejected("$", f"{p} is not valid JSON: {type(exc).__name__}: {exc}"[:500]) from exc
    name = p.name.removesuffix(".json").removesuffix(".schema")
    return task_from_json_schema(schema, name=name, strict=strict)
