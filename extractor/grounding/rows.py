"""Decoding a list whose items are known rows of the document: one item per row, in order.

Where the rows of a list are found before decoding (the item lines of an invoice's table, the
paragraphs of a staff report: `extractor.longdoc.rows`), the grammar can hold the model to them:
`constrain_rows(schema, field, rows)` returns a copy of `schema` (a strict object schema whose
property `field` is an array) in which `field` has exactly one item per row, in the rows' order
(`prefixItems`, `minItems` = `maxItems` = the number of rows), so the model can neither stop
short, nor skip a row, nor add one. With `grounded`, item k can only be read from row k:

- its values are grounded in row k alone, as `constrain_to_document` grounds an item line (free
  text is spans of the row; the item's required numbers take distinct amounts printed in the
  row, a line total excepted; dates and enums the row's own);
- a field whose column is known (`RowText.cells`: the cell printed under the column named like
  the field, see `extractor.longdoc.rows`) takes only what that cell prints: a string the cell's
  text, a number the cell's amounts, a date the cell's dates, an enum the values the cell names.
  A cell offering nothing for its field leaves the field as the row grounds it.

`nullable` (every row) or `RowText.optional` (that row): the item may be `null` instead (a
paragraph that names no record); the caller drops the nulls. Without `grounded`, only the count
is held: at least one item per firm row, at most one per row, none `null`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extractor.contracts.schema_walk import def_name, is_free_text, reachable_defs, resolve_ref
from extractor.grounding.decoding import (
    candidate_dates,
    candidate_numbers,
    constrain_to_document,
    number_enum,
    span_schema,
)

__all__ = ["RowText", "constrain_rows"]


@dataclass(frozen=True)
class RowText:
    """A row's text, by field name the cell printed under that field's column, and whether the
    row may hold no item (`optional`: its item may be `null`)."""

    text: str
    cells: Mapping[str, str] = field(default_factory=dict)
    optional: bool = False


def _rename_refs(node: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(node, list):
        return [_rename_refs(n, renames) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            name = def_name(value)
            out[key] = f"#/$defs/{renames.get(name, name)}"
        else:
            out[key] = _rename_refs(value, renames)
    return out


def _non_null(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """The node without its `null` branch (a nullable field's value type), through `$ref`s."""
    node = resolve_ref(node, root)
    branches = [b for b in node.get("anyOf", ()) if isinstance(b, Mapping) and b.get("type") != "null"]
    return resolve_ref(branches[0], root) if len(branches) == 1 else node


def _cell_node(original: Mapping[str, Any], root: Mapping[str, Any], cell: str) -> dict[str, Any] | None:
    """The schema of a field that takes only what `cell` prints, or None where it offers nothing."""
    node = _non_null(original, root)
    description = {"description": original["description"]} if "description" in original else {}
    kind = node.get("type")
    if kind in ("number", "integer") and not any(k in node for k in ("enum", "const")):
        allowed = number_enum(node, candidate_numbers(cell))
        return {**description, **{k: v for k, v in node.items() if k != "description"}, "enum": allowed} if allowed else None
    if kind == "string" and node.get("format") == "date" and "enum" not in node:
        dates = candidate_dates(cell)
        return {**description, "type": "string", "format": "date", "enum": dates} if dates else None
    if kind == "string" and isinstance(node.get("enum"), list):
        folded = cell.casefold()
        named = [v for v in node["enum"] if isinstance(v, str) and v.casefold() in folded]
        return {**description, "type": "string", "enum": named} if named else None
    if is_free_text(node) and cell.strip():
        values = list(dict.fromkeys(v for v in (cell.strip(), cell.strip(" \t,;:.")) if v))
        return {**description, **span_schema(values)}
    return None


def _objects(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The object schemas of an item node: its `anyOf` variants, or itself."""
    if "anyOf" in node and all(isinstance(b, dict) and b.get("type") == "object" for b in node["anyOf"]):
        return list(node["anyOf"])
    return [node] if node.get("type") == "object" else []


def _row_item(item: Mapping[str, Any], defs: Mapping[str, Any], root: Mapping[str, Any], row: RowText,
              tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Row `row`'s item schema and the `$defs` it uses (named with `tag`)."""
    wrapper = {"type": "object", "properties": {"x": {"type": "array", "items": dict(item), "minItems": 1,
                                                      "maxItems": 1}}, "required": ["x"], "$defs": dict(defs)}
    out = constrain_to_document(wrapper, row.text)
    node: dict[str, Any] = out["properties"]["x"]["items"]
    row_defs: dict[str, Any] = out.get("$defs", {})
    if row.cells:
        props = resolve_ref(item, root).get("properties", {})
        variants = []
        for variant in _objects(node):
            changed = {**variant, "properties": dict(variant.get("properties", {}))}
            for name, cell in row.cells.items():
                if name in props and (narrowed := _cell_node(props[name], root, cell)) is not None:
                    changed["properties"][name] = narrowed
            variants.append(changed)
        if variants:
            unique = list({json.dumps(v, sort_keys=True): v for v in variants}.values())
            node = unique[0] if len(unique) == 1 else {"anyOf": unique}
    used = reachable_defs(node, row_defs)
    renames = {name: f"{tag}{name}" for name in used}
    node = _rename_refs(node, renames)
    return node, {renames[name]: _rename_refs(row_defs[name], renames) for name in used if name in row_defs}


def constrain_rows(schema: Mapping[str, Any], field_name: str, rows: Sequence[RowText], *, grounded: bool = True,
                   nullable: bool = False) -> dict[str, Any]:
    """A copy of `schema` whose array `field_name` has one item per row (see the module's doc)."""
    out: dict[str, Any] = copy.deepcopy(dict(schema))
    array = resolve_ref(out["properties"][field_name], out)
    item: Any = array.get("items", {})
    n = len(rows)
    if isinstance(item, Mapping):
        branches = [b for b in item.get("anyOf", ()) if isinstance(b, Mapping) and b.get("type") != "null"]
        if len(branches) == 1 and len(item.get("anyOf", ())) == 2:  # a nullable item: null where a row allows it
            item = branches[0]
    if not grounded or not isinstance(item, Mapping):
        # only the count: at least one item per row that must hold one, at most one per row, none null
        firm = 0 if nullable else sum(not r.optional for r in rows)
        out["properties"][field_name] = {**array, "items": item, "minItems": firm, "maxItems": n}
        return out
    defs: dict[str, Any] = out.setdefault("$defs", {})
    inline = copy.deepcopy(dict(resolve_ref(item, out)))
    base = dict(defs)
    prefix = []
    for k, row in enumerate(rows):
        row_node, row_defs = _row_item(inline, base, out, row, f"Row{k}")
        defs.update(row_defs)
        prefix.append({"anyOf": [row_node, {"type": "null"}]} if nullable or row.optional else row_node)
    out["properties"][field_name] = {"type": "array", "prefixItems": prefix, "items": False, "minItems": n, "maxItems": n}
    kept = reachable_defs({k: v for k, v in out.items() if k != "$defs"}, defs)
    out["$defs"] = {name: d for name, d in defs.items() if name in kept}
    if not out["$defs"]:
        del out["$defs"]
    return out
