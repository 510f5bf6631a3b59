"""Fields of a record streamed as the model writes them: each sent once, never changed.

A top-level field of the output is *settled* once the JSON after it has begun (the `,` that
closes its value at depth 1): the grammar cannot change a value the model has written past. The
last field is closed by the record's own `}`: the whole record is then judged at once (a model
validator over every field), so that field comes with the result. A settled value is sent only
if every gate the record must pass that can be judged on the field alone passes (`settle`): the
strict schema and a raw schema's own, a Pydantic field's validators with the document as
context (an e-mail the person contract drops is sent as `null`, as the result has it), no echo
of the instructions, grounded where that is required. `SettledFields` finds the settled fields
in the output's text as it grows (pure, incremental).

What is sent is then fixed: a retry (a later field invalid, a model validator refusing the whole
record) decodes with every sent field pinned to its value (`pin_fields`, a `const` in the schema
the engine enforces), so the result repeats it. A field whose value only the whole record
decides (a raw schema's root that is not an object, a field refused on its own) is sent with the
result. Sent fields are final, not a promise of success: a record that still fails after its
retries ends the stream with an error, the fields sent before it stay sent.

`FieldStream` ties these to one document's extraction: the engine's text goes to `on_text`
(`TextStreaming`), each newly settled field becomes an event in `events`, and the extraction
loop reads `pinned` for its retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from extractor.contracts.contract import Task
from extractor.grounding.spans import ground_record, ungrounded_errors
from extractor.pipeline.injection import echo_errors
from extractor.pipeline.validate import field_errors

log = logging.getLogger(__name__)

_WHITESPACE = " \t\r\n"


class SettledFields:
    """The top-level fields of a JSON object whose text arrives a prefix at a time (`feed`)."""

    def __init__(self) -> None:
        self._reset("")

    def _reset(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.key_start: int | None = None  # the opening quote of the key being read (depth 1)
        self.key: str | None = None  # the key whose value is being read
        self.value_start: int | None = None
        self.dead = False  # not an object: nothing to find

    def feed(self, text: str) -> list[tuple[str, Any]]:
        """The fields settled in `text` (the output so far) that earlier calls did not give. A
        `text` that does not extend the last one (a new attempt) is read from its start."""
        if not text.startswith(self.text):
            self._reset(text)
        self.text = text
        found: list[tuple[str, Any]] = []
        while self.pos < len(text) and not self.dead:
            self._step(text[self.pos], found)
            self.pos += 1
        return found

    def _step(self, char: str, found: list[tuple[str, Any]]) -> None:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
                if self.depth == 1 and self.key_start is not None and self.key is None:
                    self.key = json.loads(self.text[self.key_start:self.pos + 1])
                    self.key_start = None
            return
        if self.depth == 0:
            if char == "{":
                self.depth = 1
            elif char not in _WHITESPACE:
                self.dead = True
            return
        if self.depth == 1 and self.key is not None and self.value_start is None:
            if char == ":" or char in _WHITESPACE:
                return
            self.value_start = self.pos
        if char == '"':
            self.in_string = True
            if self.depth == 1 and self.key is None:
                self.key_start = self.pos
        elif char in "{[":
            self.depth += 1
        elif char in "}]":
            if self.depth == 1:  # the record is whole: its last field comes with the result
                self.key = self.value_start = self.key_start = None
            self.depth -= 1
        elif char == "," and self.depth == 1:
            self._settle(found)

    def _settle(self, found: list[tuple[str, Any]]) -> None:
        if self.key is not None and self.value_start is not None:
            try:
                found.append((self.key, json.loads(self.text[self.value_start:self.pos])))
            except ValueError:  # not a whole value (cannot happen under the grammar): not sent
                pass
        self.key = self.value_start = self.key_start = None


@dataclass(frozen=True)
class FieldGates:
    """What one attempt's output must pass beyond the task's own validation (`loop._judge`): not
    echoing the instructions (`system`), and grounded in the document when `require_grounded`."""

    system: str = ""
    require_grounded: bool = False


def settle(task: Task[Any], name: str, written: Any, document: str,
           gates: FieldGates = FieldGates()) -> tuple[bool, Any]:
    """(True, the value as the result will hold it) for a top-level field the model wrote as
    `written`, where every gate the whole record will pass can be judged on the field alone and it
    passes them: the strict schema and, for a raw schema, the user's own (`field_errors`); for a
    Pydantic model, the field's validators with the document as context, its value as
    `model_dump` gives it; the instructions not echoed; grounded where that is required.
    (False, None) where only the whole record decides: a field refused on its own, a wrapped
    root, a model with `before`/`wrap` model validators (they may rewrite any field), a field
    `model_dump` leaves out, a validator that reads a field not written yet."""
    if field_errors(task.schema_json, name, written):
        return False, None
    model: type[BaseModel] | None = task.model
    if model is not None:
        ok, value = _model_field(model, name, written, document)
    elif task.prepared is not None:
        ok, value = _raw_field(task, name, written)
    else:
        ok, value = True, written
    if not ok:
        return False, None
    if echo_errors(json.dumps({name: value}), gates.system, document):
        return False, None
    if gates.require_grounded:
        record = {name: value}
        if ungrounded_errors(record, task.strict_schema, ground_record(record, document)):
            return False, None
    return True, value


def _model_field(model: type[BaseModel], name: str, written: Any, document: str) -> tuple[bool, Any]:
    if name not in model.model_fields or any(
            d.info.mode != "after" for d in model.__pydantic_decorators__.model_validators.values()):
        return False, None
    # a partial record holding nothing else (no defaults: a validator that reads another field
    # fails, and the field is judged with the whole record instead)
    record = model.__new__(model)
    for attr, value in (("__dict__", {}), ("__pydantic_fields_set__", set()), ("__pydantic_extra__", None),
                        ("__pydantic_private__", None)):
        object.__setattr__(record, attr, value)
    try:
        model.__pydantic_validator__.validate_assignment(record, name, written, context={"document": document})
    except ValidationError as exc:
        if any(tuple(error["loc"][:1]) == (name,) for error in exc.errors()):
            return False, None
        # an `after` model validator refused the partial record: the field's own validation passed
    except Exception:  # an `after` model validator reading a field the partial record has not got
        pass
    if name not in record.__dict__:  # the assignment itself did not happen
        return False, None
    dumped = record.model_dump(mode="json", include={name}, warnings=False)
    return (True, dumped[name]) if name in dumped else (False, None)


def _raw_field(task: Task[Any], name: str, written: Any) -> tuple[bool, Any]:
    prepared = task.prepared
    assert prepared is not None and task.original_schema_json is not None
    if prepared.wrapped:
        return False, None
    finished = prepared.finish({name: written})
    if not isinstance(finished, dict) or name not in finished:
        return False, None  # a null strict mode added for an optional property: the result leaves it out
    if field_errors(task.original_schema_json, name, finished[name], original=True):
        return False, None
    return True, finished[name]


def pin_fields(schema: Mapping[str, Any], pinned: Mapping[str, Any]) -> Mapping[str, Any]:
    """`schema` with each top-level property in `pinned` allowed only the value written, and
    required: a schema that left it out (the compact bounds keep required properties only) gets it
    back, so that no field sent is missing from the result."""
    properties = schema.get("properties")
    if not pinned or not isinstance(properties, Mapping):
        return schema
    required = list(schema.get("required") or [])
    return {**schema, "properties": {**properties, **{name: {"const": value} for name, value in pinned.items()}},
            "required": required + [name for name in pinned if name not in required]}


class FieldStream:
    """One document's settled fields as events (`{"event": "field", "field", "value"}` in
    `events`), fed by the engine's text (`on_text`); `pinned` holds what the model wrote for each
    field sent, for the extraction loop's retries; `sent` what was sent."""

    def __init__(self, task: Task[Any], document: str) -> None:
        self.task, self.document = task, document
        #: the gates of the attempt being streamed (`loop._Attempts` sets them for each attempt)
        self.gates = FieldGates()
        self.reader = SettledFields()
        self.pinned: dict[str, Any] = {}
        self.sent: dict[str, Any] = {}
        self.refused: set[tuple[str, str]] = set()  # (field, written JSON) its validation refused
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_text(self, text: str) -> None:
        try:
            settled = self.reader.feed(text)
        except Exception:  # never the extraction's failure: its fields then come with the result
            log.exception("%s: the output's fields could not be read as it grew", self.task.name)
            self.reader.dead = True
            return
        for name, written in settled:
            if name in self.sent:
                continue
            key = (name, json.dumps(written, sort_keys=True))
            if key in self.refused:
                continue
            try:
                ok, value = settle(self.task, name, written, self.document, self.gates)
            except Exception:  # a model whose validation cannot run on a partial record at all
                log.exception("%s: the field %r could not be judged alone; it comes with the result", self.task.name, name)
                ok, value = False, None
            if not ok:
                self.refused.add(key)
                continue
            self.pinned[name], self.sent[name] = written, value
            self.events.put_nowait({"event": "field", "field": name, "value": value})
