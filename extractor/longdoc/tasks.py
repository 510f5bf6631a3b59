"""The tasks a chunk is extracted with, derived from the user's task.

- `part_task`: one record over a long document. Each chunk may show only some of the record (the
  vendor on the first page, the total on the last), so every top-level field becomes nullable and
  a top-level list may be empty; the record's own validators run on the merged record, not here.
- `rows_task`: one list field only, over a chunk of that list's rows (`extractor.longdoc.rows`).
- `header_task`: every field but the lists whose rows were taken out, over the document without
  those rows; as required as the task says (`part=True`: nullable, where the document without
  its rows is still cut in several pieces).
- `records_task`: many records (`many=True`): `{"records": [record, ...]}`, each record validated
  by the task's own model (validators included) inside the chunk's retry loop; `nullable`: a
  record may be `null` (a paragraph that names none), which the merge drops.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, Field, create_model

from extractor.contracts.contract import Example, Task, task_from_model
from extractor.contracts.schema_walk import reachable_defs

RECORDS = "records"

ROWS_NOTE = ("The document is rows of a table (or passages) of a longer document, under the table's header line. "
             "Give one item per row, in the order they are printed.")
HEADER_NOTE = "The document is a longer document without its {lists}: give its other fields."
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


def project(strict: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """`strict` with only the top-level `fields`, required as they were."""
    props = strict.get("properties", {})
    out: dict[str, Any] = {"type": "object", "properties": {}, "required": [f for f in strict.get("required", [])
                                                                          if f in fields],
                           "additionalProperties": False}
    for name in fields:
        out["properties"][name] = copy.deepcopy(props[name])
    all_defs = copy.deepcopy(strict.get("$defs", {}))
    used = reachable_defs(out, all_defs)
    defs = {name: d for name, d in all_defs.items() if name in used}
    if defs:
        out["$defs"] = defs
    return out


def rows_task(task: Task[Any], field: str, max_tokens: int) -> Task[BaseModel]:
    """The task of a chunk of list `field`'s rows (see the module docstring)."""
    schema = project(task.strict_schema, [field])
    node = schema["properties"][field]
    arrays = [b for b in node.get("anyOf", ()) if isinstance(b, dict) and b.get("type") == "array"]
    if node.get("type") != "array" and len(arrays) == 1:
        schema["properties"][field] = node = {**arrays[0], **({"description": node["description"]}
                                                                if "description" in node else {})}
    node.pop("minItems", None)
    examples = tuple(Example(ex.document, {field: ex.record[field]}) for ex in task.examples
                     if isinstance(ex.record.get(field), list))
    return Task(name=task.name, version=task.version, instructions=f"{task.instructions}\n{ROWS_NOTE}",
                strict_schema=schema, max_tokens=max_tokens, model=None, examples=examples,
                grounded_decoding=task.grounded_decoding)


def header_task(task: Task[Any], lists: list[str], max_tokens: int, part: bool = False) -> Task[BaseModel]:
    """The task of the document without the rows of `lists` (see the module docstring)."""
    fields = [f for f in task.strict_schema.get("properties", {}) if f not in lists]
    schema = project(task.strict_schema, fields)
    if part:
        schema = part_schema(schema)
    note = PART_NOTE if part else HEADER_NOTE.format(lists=" and ".join(f"{f} rows" for f in lists))
    examples = tuple(Example(ex.document, {k: v for k, v in ex.record.items() if k not in lists})
                     for ex in task.examples)
    return Task(name=task.name, version=task.version, instructions=f"{task.instructions}\n{note}",
                strict_schema=schema, max_tokens=max_tokens, model=None, examples=examples,
                grounded_decoding=task.grounded_decoding, field_candidates=task.field_candidates,
                candidates_from_names=task.candidates_from_names)


def part_task(task: Task[Any], max_tokens: int) -> Task[BaseModel]:
    """The task of one chunk of a single record (see the module docstring)."""
    return Task(name=task.name, version=task.version, instructions=f"{task.instructions}\n{PART_NOTE}",
                strict_schema=part_schema(task.strict_schema), max_tokens=max_tokens, model=None,
                examples=task.examples, grounded_decoding=task.grounded_decoding)


def records_task(task: Task[Any], max_tokens: int, nullable: bool = False) -> Task[Any]:
    """The task of a chunk of many records (see the module docstring)."""
    if nullable:
        instructions = (f"Give one record per passage of the document, in the order they are printed, each as the "
                        f"instructions below describe; null for a passage that holds none.\n{task.instructions}")
    else:
        instructions = (f"List every record the document holds, each as the instructions below describe, in the "
                        f"order they are printed; an empty list if there is none.\n{task.instructions}")
    examples = tuple(Example(ex.document, {RECORDS: [ex.record]}) for ex in task.examples)
    if task.model is not None:
        item: Any = task.model | None if nullable else task.model
        wrapper: type[BaseModel] = create_model(
            f"{task.model.__name__}Records",
            records=(list[item], Field(description=f"every {task.name} record of the document")))
        wrapped = task_from_model(wrapper)
        return replace(wrapped, name=task.name, version=task.version, instructions=instructions, examples=examples,
                       max_tokens=max_tokens, grounded_decoding=task.grounded_decoding)
    strict = copy.deepcopy(task.strict_schema)
    defs = strict.pop("$defs", None)
    items: dict[str, Any] = {"anyOf": [strict, {"type": "null"}]} if nullable else strict
    schema: dict[str, Any] = {"type": "object", "properties": {RECORDS: {"type": "array", "items": items}},
                              "required": [RECORDS], "additionalProperties": False}
    if defs:
        schema["$defs"] = defs
    return Task(name=task.name, version=task.version, instructions=instructions, strict_schema=schema,
                max_tokens=max_tokens, model=None, examples=examples, grounded_decoding=task.grounded_decoding)
