"""Per-field candidates: a contract's own rules narrow a field to a few ranked values.

Grounded decoding (`decoding.constrain_to_document`) lets a free-text field take any span of the
document: thousands for a receipt, among which a 135M model picks the date line as the address.
A contract that knows where its fields sit can declare `field_candidates`, a function from the
document to ordered candidate values per top-level field (best first); `offer_candidates` then
gives each such field an `enum` of exactly those values, after the document's spans were offered,
so the grammar lets the model choose among a few plausible values only. A field for which the
function finds nothing keeps what grounded decoding gave it, and a nullable field keeps its
`null` branch. The values need not be verbatim spans (a rule may re-punctuate an OCR line the way
the labels write it); validation still checks the task's own strict schema.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any


def _nullable(node: Mapping[str, Any]) -> bool:
    return any(isinstance(b, Mapping) and b.get("type") == "null" for b in node.get("anyOf", ()))


def offer_candidates(schema: Mapping[str, Any], candidates: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """A copy of `schema` (a strict object schema, grounded or not) whose top-level string
    properties named in `candidates` with at least one value can only take those values."""
    out: dict[str, Any] = copy.deepcopy(dict(schema))
    props = out.get("properties")
    if not isinstance(props, dict):
        return out
    for name, values in candidates.items():
        allowed = list(dict.fromkeys(v for v in values if isinstance(v, str) and v.strip()))
        node = props.get(name)
        if not allowed or not isinstance(node, dict):
            continue
        enum: dict[str, Any] = {"type": "string", "enum": allowed}
        kept = {k: v for k, v in node.items() if k in ("description", "title")}
        props[name] = {**kept, "anyOf": [enum, {"type": "null"}]} if _nullable(node) else {**kept, **enum}
    return out
