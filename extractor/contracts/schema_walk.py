"""Reading a (strict or raw) JSON schema: the one `$ref` resolver and the one definition of a
free-text field, for every module that walks schemas (prompt, grounding, grounded decoding, eval).

`resolve_ref` follows local refs (`#/$defs/Name`, `#/definitions/Name`, any JSON pointer into the
root) and merges the keywords written beside a `$ref` over its target, as JSON Schema 2019+ reads
them. `fold_pattern_properties` is the one rewrite of `patternProperties` for a grammar that
cannot take them (xgrammar's, vLLM's). `is_free_text` says whether a string field holds text
copied from the document: type string (alone or with null), with no `enum`, `const`, `format` or
`pattern` that would make it a code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: refs followed in a chain before giving up (the compiler refuses recursive refs it cannot bound)
MAX_REF_CHAIN = 32
#: keywords that make a string a code, not free text
NOT_FREE = ("enum", "const", "format", "pattern")


def pointer(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    """The node a local ref points at (`#/$defs/A`, `#/definitions/A/properties/b`); `{}` when it
    points nowhere or is not local."""
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for token in ref[1:].split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and token.isdigit():
            node = node[int(token)] if int(token) < len(node) else {}
        else:
            node = node.get(token, {}) if isinstance(node, Mapping) else {}
    return node if isinstance(node, Mapping) else {}


def resolve_ref(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """`node` with its chain of local `$ref`s followed; keywords beside a `$ref` win over its
    target's. `{}` where a ref points nowhere."""
    for _ in range(MAX_REF_CHAIN):
        if not isinstance(node, Mapping) or "$ref" not in node:
            break
        target = pointer(root, str(node["$ref"]))
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **siblings} if siblings else target
    return node


def def_name(ref: str) -> str:
    """The definition a local ref names (`#/$defs/Item` -> `Item`)."""
    return ref.rsplit("/", 1)[-1]


def reachable_defs(node: Any, defs: Mapping[str, Any]) -> set[str]:
    """The names of the `$defs` entries `node` refers to (`#/$defs/Name`), directly or through
    other entries of `defs`."""
    seen: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, Mapping):
            ref = n.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and (name := def_name(ref)) not in seen:
                seen.add(name)
                stack.append(defs.get(name, {}))
            stack.extend(v for k, v in n.items() if k != "$ref")
    return seen


def type_names(node: Mapping[str, Any]) -> tuple[str, ...]:
    """The node's `type` as a tuple (`"string"` -> `("string",)`; absent -> `()`)."""
    kinds = node.get("type")
    if isinstance(kinds, str):
        return (kinds,)
    return tuple(k for k in kinds if isinstance(k, str)) if isinstance(kinds, list) else ()


def allows_null(node: Mapping[str, Any]) -> bool:
    """Whether the node takes null: a null branch of its `anyOf` (the strict schema's nullable
    form), or "null" among its types."""
    return "null" in type_names(node) or any(
        isinstance(b, Mapping) and b.get("type") == "null" for b in node.get("anyOf", ()))


def is_free_text(node: Mapping[str, Any]) -> bool:
    """A string the model should copy from the document: type string (or string and null) with
    no enum, const, format or pattern."""
    kinds = type_names(node)
    return "string" in kinds and set(kinds) <= {"string", "null"} and not any(k in node for k in NOT_FREE)


#: patterns that match every string as a JSON Schema search (`^.*$` is not one: `.` stops at a newline)
MATCH_EVERY_KEY: Final = frozenset({"", ".*", "^.*", ".*$", "^", "$", "[\\s\\S]*"})


def fold_pattern_properties(node: dict[str, Any]) -> None:
    """`patternProperties` folded into `additionalProperties`, in place: any key may then take a
    value valid under one of the patterns' schemas (or the old `additionalProperties`). Keys are
    no longer matched against the patterns: validation after decoding checks them."""
    patterns = node.pop("patternProperties", None)
    if not isinstance(patterns, Mapping):
        return
    # a pattern every key matches (`.*`: the Washington Post's string dictionaries) leaves
    # `additionalProperties` nothing to apply to
    extra = False if any(p in MATCH_EVERY_KEY for p in patterns) else node.get("additionalProperties", True)
    alternatives = [*patterns.values(), *([extra] if extra is not False else [])]
    if extra is True or any(v is True for v in alternatives):
        node["additionalProperties"] = True
    elif alternatives:
        node["additionalProperties"] = {"anyOf": alternatives} if len(alternatives) > 1 else alternatives[0]
