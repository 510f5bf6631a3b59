"""Per-field candidates: a contract's own rules narrow a field to a few ranked values.

Grounded decoding (`decoding.constrain_to_document`) lets a free-text field take any span of the
document: thousands for a receipt, among which a 135M model picks the date line as the address.
A contract that knows where its fields sit can declare `field_candidates`, a function from the
document to ordered candidate values per top-level field (best first); `offer_candidates` then
gives each such field an `enum` of exactly those values, after the document's spans were offered,
so the grammar lets the model choose among a few plausible values only. A field for which the
function finds nothing keeps what grounded decoding gave it. `None` among a field's candidates
offers `null` too (where the field is nullable); without it a nullable field must take one of the
values (an e-mail address the text prints). `[None]` alone says the field is absent: it can only be
`null` (a person's age when the text prints none), so the model cannot invent one.
Integer fields take integer candidates (an age). The values need not be verbatim spans (a rule may
re-punctuate an OCR line the way the labels write it); validation still checks the task's own
strict schema.

`set_aside` is how the pipeline uses it: the fields the candidates settle are set aside (as
`null`) before the document's spans are offered to the rest, then put back as their enums
(`put_back`), so a document whose spans would make a field's grammar too large (a prompt
injection's paragraphs) still decodes grounded when the candidates settle that field.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from extractor.contracts.schema_walk import allows_null


def _value_type(node: Mapping[str, Any]) -> str | None:
    """The one non-null JSON type a property takes (`string`, `integer` ...), or None."""
    branches = [b for b in node.get("anyOf", [node]) if isinstance(b, Mapping) and b.get("type") != "null"]
    types = set()
    for b in branches:
        if isinstance(b.get("type"), str):
            types.add(b["type"])
        elif str(b.get("$ref", "")).endswith("DocumentSpan") or (
                "enum" in b and all(isinstance(v, str) for v in b["enum"])):  # a grounded free-text field
            types.add("string")
        else:
            return None
    return types.pop() if len(types) == 1 else None


def _fits(value: object, kind: str | None) -> bool:
    if kind == "string":
        return isinstance(value, str) and bool(value.strip())
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return False


def offer_candidates(schema: Mapping[str, Any], candidates: Mapping[str, Sequence[object]]) -> dict[str, Any]:
    """A copy of `schema` (a strict object schema, grounded or not) whose top-level string or
    integer properties named in `candidates` with at least one value can only take those values,
    and `null` where the property is nullable and the values include None; `[None]` makes a
    nullable property `null` only."""
    out: dict[str, Any] = copy.deepcopy(dict(schema))
    props = out.get("properties")
    if not isinstance(props, dict):
        return out
    for name, values in candidates.items():
        node = props.get(name)
        if not isinstance(node, dict):
            continue
        kind = _value_type(node)
        allowed = list(dict.fromkeys(v for v in values if _fits(v, kind)))
        kept = {k: v for k, v in node.items() if k in ("description", "title")}
        if not allowed:
            if values and all(v is None for v in values) and allows_null(node):
                props[name] = {**kept, "type": "null"}
            continue
        enum: dict[str, Any] = {"type": kind, "enum": allowed}
        null = allows_null(node) and any(v is None for v in values)
        props[name] = {**kept, "anyOf": [enum, {"type": "null"}]} if null else {**kept, **enum}
    return out


def set_aside(schema: Mapping[str, Any], candidates: Mapping[str, Sequence[object]]
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`schema` with the properties `candidates` settle (`offer_candidates` changes them) made
    `{"type": "null"}`, those properties' offered nodes): grounded decoding builds the rest of the
    schema from the document's spans, then `put_back` puts the offered nodes in again."""
    offered = offer_candidates(schema, candidates)
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return dict(schema), {}
    settled = {name: node for name, node in offered["properties"].items() if node != props.get(name)}
    if not settled:
        return dict(schema), {}
    aside = {name: ({"type": "null"} if name in settled else node) for name, node in props.items()}
    return {**schema, "properties": aside}, settled


def put_back(schema: Mapping[str, Any], settled: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` (built from `set_aside`'s) with the settled properties' offered nodes in again."""
    if not settled:
        return dict(schema)
    return {**schema, "properties": {**schema["properties"], **settled}}
