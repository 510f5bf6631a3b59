"""Fields of a record streamed as the model writes them: each sent once, never changed.

A top-level field of the output is *settled* once the JSON after it has begun (the `,` that
closes its value at depth 1): the grammar cannot change a value the model has written past. The
last field is closed by the record's own `}`: the whole record is then judged at once (a model
validator over every field), so that field comes with the result.
`SettledFields` finds them in the output's text as it grows (pure, incremental). A settled value
is sent only if it passes the field's own validation with the document as context (`settle`): a
Pydantic model's field validators (an e-mail dropped if it is not in the document is not sent as
written), a raw schema's value as the user's schema has it. What is sent is then fixed: a retry
(a later field invalid, a model validator refusing the whole record) decodes with every sent
field pinned to its value (`pin_fields`, a `const` in the schema the engine enforces), so the
result repeats it. A field whose value only the whole record decides (a raw schema's root that
is not an object, a field its validator refuses on its own) is sent with the result.

`FieldStream` ties these to one document's extraction: the engine's text goes to `on_text`
(`TextStreaming`), each newly settled field becomes an event in `events`, and the extraction
loop reads `pinned` for its retries.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from extractor.contracts.contract import Task

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


def settle(task: Task[Any], name: str, written: Any, document: str) -> tuple[bool, Any]:
    """(True, the value as the result will hold it) for a field the model wrote as `written`,
    where the field's own validation passes; (False, None) where only the whole record decides."""
    model: type[BaseModel] | None = task.model
    if model is not None:
        if name not in model.model_fields:
            return False, None
        record = model.model_construct()
        try:
            model.__pydantic_validator__.validate_assignment(record, name, written, context={"document": document})
        except ValidationError as exc:
            if any(tuple(error["loc"][:1]) == (name,) for error in exc.errors()):
                return False, None
            # a model validator refused the partial record: the field's own validation had passed
        except Exception:  # a model validator reading a field the partial record has not got
            pass
        if name not in record.__dict__:
            return False, None
        return True, to_jsonable_python(record.__dict__[name], by_alias=False)
    prepared = task.prepared
    if prepared is None:
        return True, written
    if prepared.wrapped:
        return False, None
    finished = prepared.finish({name: written})
    if not isinstance(finished, dict) or name not in finished:
        return False, None  # a null strict mode added for an optional property: the result leaves it out
    return True, finished[name]


def pin_fields(schema: Mapping[str, Any], pinned: Mapping[str, Any]) -> Mapping[str, Any]:
    """`schema` with each of its top-level properties in `pinned` allowed only the value written."""
    properties = schema.get("properties")
    if not pinned or not isinstance(properties, Mapping):
        return schema
    fixed = {name: {"const": value} for name, value in pinned.items() if name in properties}
    return {**schema, "properties": {**properties, **fixed}} if fixed else schema


class FieldStream:
    """One document's settled fields as events (`{"event": "field", "field", "value"}` in
    `events`), fed by the engine's text (`on_text`); `pinned` holds what the model wrote for each
    field sent, for the extraction loop's retries; `sent` what was sent."""

    def __init__(self, task: Task[Any], document: str) -> None:
        self.task, self.document = task, document
        self.reader = SettledFields()
        self.pinned: dict[str, Any] = {}
        self.sent: dict[str, Any] = {}
        self.refused: set[tuple[str, str]] = set()  # (field, written JSON) its validation refused
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_text(self, text: str) -> None:
        for name, written in self.reader.feed(text):
            if name in self.sent:
                continue
            key = (name, json.dumps(written, sort_keys=True))
            if key in self.refused:
                continue
            ok, value = settle(self.task, name, written, self.document)
            if not ok:
                self.refused.add(key)
                continue
            self.pinned[name], self.sent[name] = written, value
            self.events.put_nowait({"event": "field", "field": name, "value": value})
