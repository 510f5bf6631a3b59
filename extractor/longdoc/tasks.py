"""The tasks a chunk is extracted with, derived from the user's task.

- `part_task`: one record over a long document. Each chunk may show only some of the record (the
  vendor on the first page, the total on the last), so every top-level field becomes nullable and
  a top-level list may be empty; the record's own validators run on the merged record, not here.
- `records_task`: many records (`many=True`): `{"records": [record, ...]}`, each record validated
  by the task's own model (validators included) inside the chunk's retry loop.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, Field, create_model

from extractor.contracts.contract import Example, Task, task_from_model

RECORDS = "records"

PART_NOTE = ("The document is one part of a longer document. Give only what this part shows: null for a field "
             "it does not show, and only the list items printed in this part.")


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("type") == "null" or any(b.get("type") == "null" for b in node.get("anyOf", []) if isinstance(b, dict)):
        return node
    description = node.get("description")
    inner = {k: v for k, v in node.items() if k != "description"}
    out: dict[str, Any] = {"anyOf": [inner, {"type": "null"}]}
    if description:
        out["description"] = description
    return out


def part_schema(strict: dict[str, Any]) -> dict[str, Any]:
    """`strict` with every top-level field nullable (lists: may be empty instead)."""
    out = copy.deepcopy(strict)
    props: dict[str, Any] = out.get("properties", {})
    for name, node in props.items():
        if node.get("type") == "array":
            node.pop("minItems", None)
        else:
            props[name] = _nullable(node)
    return out


def part_task(task: Task[Any], max_tokens: int) -> Task[BaseModel]:
    """The task of one chunk of a single record (see the module docstring)."""
    return Task(name=task.name, version=task.version, instructions=f"{task.instructions}\n{PART_NOTE}",
                strict_schema=part_schema(task.strict_schema), max_tokens=max_tokens, model=None,
                examples=task.examples, grounded_decoding=task.grounded_decoding)


def records_task(task: Task[Any], max_tokens: int) -> Task[Any]:
    """The task of a chunk of many records (see the module docstring)."""
    instructions = (f"List every record the document holds, each as the instructions below describe, in the order "
                    f"they are printed; an empty list if there is none.\n{task.instructions}")
    examples = tuple(Example(ex.document, {RECORDS: [ex.record]}) for ex in task.examples)
    if task.model is not None:
        wrapper: type[BaseModel] = create_model(
            f"{task.model.__name__}Records",
            records=(list[task.model], Field(description=f"every {task.name} record of the document")))  # type: ignore[name-defined]
        wrapped = task_from_model(wrapper)
        return replace(wrapped, name=task.name, version=task.version, instructions=instructions, examples=examples,
                       max_tokens=max_tokens, grounded_decoding=task.grounded_decoding)
    strict = copy.deepcopy(task.strict_schema)
    defs = strict.pop("$defs", None)
    schema: dict[str, Any] = {"type": "object", "properties": {RECORDS: {"type": "array", "items": strict}},
                              "required": [RECORDS], "additionalProperties": False}
    if defs:
        schema["$defs"] = defs
    return Task(name=task.name, version=task.version, instructions=instructions, strict_schema=schema,
                max_tokens=max_tokens, model=None, examples=examples, grounded_decoding=task.grounded_decoding)
