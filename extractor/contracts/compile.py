"""Schema compiler: any JSON Schema -> the strict schema grammar engines enforce.

Strict means: every object has `additionalProperties: false`, every property
is required (optional ones become nullable), `$ref`s point into `$defs`, and
only keywords that xgrammar and llguidance both enforce remain. Descriptions
are kept (they guide the model); titles and defaults are dropped.

Anything that cannot be enforced, or that is past a limit, is refused with
`SchemaRejected(path, reason)` before any model runs.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema

from extractor.contracts.regex_risk import backtracking_risk
from extractor.contracts.schema_walk import def_name
from extractor.errors import SchemaRejected


@dataclass(frozen=True)
class Limits:
    max_depth: int = 12
    max_properties: int = 256
    max_enum: int = 1024
    max_bytes: int = 1024 * 1024
    max_pattern_length: int = 1000
    #: bytes of one enum's values (as JSON): long enums of long strings compile for minutes in xgrammar
    max_enum_bytes: int = 64 * 1024
    #: sum of the regex repetition bounds (`{m,n}`) over every pattern of a schema: each one is
    #: unrolled into grammar states, and masks are computed per state over the whole vocabulary
    max_pattern_repeats: int = 2000
    #: nesting of the raw JSON value (objects and arrays), checked before anything else walks it
    max_json_depth: int = 64


DEFAULT_LIMITS = Limits()

JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})

# Keywords kept in the strict schema (each enforced by the grammar, or
# harmless annotations).
SUPPORTED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
    "description", "format", "pattern", "minLength", "maxLength", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
    "$schema", "$id", "title", "default", "examples", "uniqueItems", "discriminator",
    "x-version", "x-examples", "x-grounded-decoding", "x-merge-rules", "readOnly", "writeOnly", "deprecated", "$comment",
})
DROPPED = frozenset({"title", "default", "examples", "discriminator", "x-version", "x-examples", "x-grounded-decoding",
                     "x-merge-rules",
                     "$schema", "$id", "readOnly", "writeOnly", "deprecated", "$comment"})

# Formats xgrammar and llguidance both turn into grammar.
FORMATS = frozenset({"date", "date-time", "time", "email", "uuid", "uri", "ipv4", "ipv6", "hostname"})

_BACKREF = re.compile(r"\\[1-9]|\\k<")
_LOOKAROUND = re.compile(r"\(\?[=!<]")
_REPEAT = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")


def pattern_repeats(pattern: str) -> int:
    """The sum of a regex's explicit repetition bounds (`{n}`, `{m,n}`; `{m,}` counts m)."""
    return sum(int(hi) if hi else int(lo) for lo, hi in _REPEAT.findall(pattern))


def check_pattern(pattern: Any, path: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse regexes that are invalid, too long, or can backtrack catastrophically."""
    if not isinstance(pattern, str):
        raise SchemaRejected(path, "pattern must be a string")
    if "\x00" in pattern:
        raise SchemaRejected(path, "pattern contains a NUL character")
    if len(pattern) > limits.max_pattern_length:
        raise SchemaRejected(path, f"pattern longer than {limits.max_pattern_length} characters")
    if _BACKREF.search(pattern) or _LOOKAROUND.search(pattern):
        raise SchemaRejected(path, "backreferences and lookaround cannot be enforced by a grammar")
    try:
        re.compile(pattern)
        risk = backtracking_risk(pattern)
    except (re.error, RecursionError) as exc:
        raise SchemaRejected(path, f"invalid regular expression: {exc}") from exc
    if risk is not None:
        raise SchemaRejected(path, risk)


def _json_depth_check(value: Any, limit: int) -> None:
    """Refuse JSON nested deeper than `limit` (iteratively: a deep value must not exhaust the stack)."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > limit:
            raise SchemaRejected(path, f"JSON nested deeper than {limit} levels")
        if isinstance(node, dict):
            stack.extend((v, _join(path, str(k)), depth + 1) for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, _join(path, i), depth + 1) for i, v in enumerate(node) if isinstance(v, (dict, list)))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_$][\w$-]*", key) else f"{path}[{json.dumps(key)}]"


class _Compiler:
    def __init__(self, root: dict[str, Any], limits: Limits) -> None:
        self.root = root
        self.limits = limits
        self.properties = 0
        self.repeats = 0
        self.defs: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            block = root.get(key, {})
            if not isinstance(block, dict):
                raise SchemaRejected(f"$.{key}", "must be an object")
            self.defs.update(block)

    def ref_target(self, ref: Any, path: str) -> str:
        if not isinstance(ref, str):
            raise SchemaRejected(path, "$ref must be a string")
        m = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref)
        if not m:
            raise SchemaRejected(path, f"only local refs of the form #/$defs/Name are supported, got {ref!r}")
        if m.group(2) not in self.defs:
            raise SchemaRejected(path, f"$ref points to a missing definition {m.group(2)!r}")
        return m.group(2)

    def node(self, s: Any, path: str, depth: int) -> Any:
        if isinstance(s, bool):
            if s is False:
                raise SchemaRejected(path, "a schema of `false` matches nothing")
            raise SchemaRejected(path, "an unconstrained schema (`true` or `{}`) cannot be enforced strictly")
        if not isinstance(s, dict):
            raise SchemaRejected(path, f"a schema must be a JSON object, got {type(s).__name__}")
        if depth > self.limits.max_depth:
            raise SchemaRejected(path, f"nesting deeper than {self.limits.max_depth}")
        for key in s:
            if key not in SUPPORTED:
                raise SchemaRejected(_join(path, key), f"unsupported keyword {key!r}")
        out: dict[str, Any] = {k: v for k, v in s.items() if k not in DROPPED and k not in ("$defs", "definitions")}

        if "$ref" in s:
            name = self.ref_target(s["$ref"], _join(path, "$ref"))
            for key in out:
                if key not in ("$ref", "description"):  # unchecked beside a $ref: they belong in the definition
                    raise SchemaRejected(_join(path, key), f"{key!r} beside a $ref; put it in the definition")
            out["$ref"] = f"#/$defs/{name}"
            return out

        types = s.get("type")
        if types is not None:
            tlist = types if isinstance(types, list) else [types]
            for t in tlist:
                if not isinstance(t, str) or t not in JSON_TYPES:
                    raise SchemaRejected(_join(path, "type"), f"unknown type {t!r}")
        else:
            tlist = []

        for comb in ("anyOf", "oneOf", "allOf"):
            if comb in s:
                branches = s[comb]
                if not isinstance(branches, list) or not branches:
                    raise SchemaRejected(_join(path, comb), "must be a non-empty list")
                out[comb] = [self.node(b, _join(_join(path, comb), i), depth + 1) for i, b in enumerate(branches)]
        if "oneOf" in out:
            # Grammars cannot check "exactly one"; branches of generated schemas are disjoint.
            out.setdefault("anyOf", []).extend(out.pop("oneOf"))
        if "allOf" in out:
            if len(out["allOf"]) != 1:
                raise SchemaRejected(_join(path, "allOf"), "allOf with more than one branch cannot be enforced")
            inner = out.pop("allOf")[0]
            out = {**inner, **{k: v for k, v in out.items() if k != "allOf"}}

        if "enum" in s:
            enum = s["enum"]
            if not isinstance(enum, list) or not enum:
                raise SchemaRejected(_join(path, "enum"), "must be a non-empty list")
            if len(enum) > self.limits.max_enum:
                raise SchemaRejected(_join(path, "enum"), f"{len(enum)} values, more than the limit of {self.limits.max_enum}")
            size = len(json.dumps(enum, separators=(",", ":"), default=str))
            if size > self.limits.max_enum_bytes:
                raise SchemaRejected(_join(path, "enum"),
                                     f"values of {size} bytes, more than the limit of {self.limits.max_enum_bytes}")
        if "pattern" in s:
            check_pattern(s["pattern"], _join(path, "pattern"), self.limits)
            self.repeats += pattern_repeats(s["pattern"])
            if self.repeats > self.limits.max_pattern_repeats:
                raise SchemaRejected(_join(path, "pattern"), "the schema's patterns repeat more than "
                                     f"{self.limits.max_pattern_repeats} times in all ({{m,n}} bounds add up)")
        if "format" in s and (not isinstance(s["format"], str) or s["format"] not in FORMATS):
            raise SchemaRejected(_join(path, "format"), f"format {s['format']!r} is not supported; use one of {sorted(FORMATS)}")

        if "object" in tlist or "properties" in s:
            self.object(s, out, path, depth)
        if "items" in s:
            out["items"] = self.node(s["items"], _join(path, "items"), depth + 1)
        if "prefixItems" in s:
            if not isinstance(s["prefixItems"], list):
                raise SchemaRejected(_join(path, "prefixItems"), "must be a list")
            out["prefixItems"] = [self.node(b, _join(_join(path, "prefixItems"), i), depth + 1)
                                  for i, b in enumerate(s["prefixItems"])]
        if "array" in tlist and "items" not in s and "prefixItems" not in s:
            raise SchemaRejected(path, "an array needs `items`")
        if not tlist and not any(k in out for k in ("anyOf", "enum", "const", "$ref", "type")):
            raise SchemaRejected(path, "an unconstrained schema (`true` or `{}`) cannot be enforced strictly")
        return out

    def object(self, s: dict[str, Any], out: dict[str, Any], path: str, depth: int) -> None:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaRejected(_join(path, "properties"), "must be an object")
        extra = s.get("additionalProperties", False)
        if extra not in (False, None) and props:
            raise SchemaRejected(_join(path, "additionalProperties"),
                                 "objects must be closed (additionalProperties: false) to be strict")
        if not props:
            raise SchemaRejected(path, "an object without properties cannot be enforced strictly")
        self.properties += len(props)
        if self.properties > self.limits.max_properties:
            raise SchemaRejected(path, f"more than {self.limits.max_properties} properties in the schema")
        required = s.get("required", [])
        if not isinstance(required, list):
            raise SchemaRejected(_join(path, "required"), "must be a list")
        for r in required:
            if not isinstance(r, str) or r not in props:
                raise SchemaRejected(_join(path, "required"), f"{r!r} is required but not a property")
        new_props: dict[str, Any] = {}
        for key, sub in props.items():
            sub_path = _join(_join(path, "properties"), key)
            compiled = self.node(sub, sub_path, depth + 1)
            if key not in required and not _is_nullable(compiled, self.defs):
                compiled = _nullable(compiled)
            new_props[key] = compiled
        out["type"] = "object"
        out["properties"] = new_props
        out["required"] = list(props)
        out["additionalProperties"] = False

    def compile(self) -> dict[str, Any]:
        root = self.root
        out: dict[str, Any] = self.node(root, "$", 0)
        if "$ref" in out:  # a root that is a reference (Pydantic does this for recursive models)
            name = def_name(out["$ref"])
            out = {**self.node(self.defs[name], f"$.$defs.{name}", 0),
                   **{k: v for k, v in out.items() if k != "$ref"}}
        if out.get("type") != "object":
            raise SchemaRejected("$", "the root of a schema must be an object with properties")
        if self.defs:
            out["$defs"] = {
                name: self.node(d, f"$.$defs.{name}", 1) for name, d in self.defs.items()
            }
        self.check_ref_depth(out)
        return out

    def check_ref_depth(self, schema: dict[str, Any]) -> None:
        """Nesting depth counted through $refs; a cycle of refs counts as too deep."""
        limit = self.limits.max_depth
        defs = schema.get("$defs", {})

        def walk(n: Any, depth: int, stack: tuple[str, ...], path: str) -> None:
            if depth > limit:
                raise SchemaRejected(path, f"nesting deeper than {limit} (through $ref)")
            if isinstance(n, dict):
                ref = n.get("$ref")
                if isinstance(ref, str):
                    name = def_name(ref)
                    if name in stack:
                        raise SchemaRejected(path, f"recursive $ref to {name!r}: nesting has no bound")
                    walk(defs.get(name), depth, (*stack, name), f"$.$defs.{name}")
                for k, v in n.items():
                    if k in ("properties", "$defs"):
                        continue
                    if isinstance(v, (dict, list)):
                        walk(v, depth + 1, stack, _join(path, k))
                for k, v in n.get("properties", {}).items():
                    walk(v, depth + 1, stack, _join(_join(path, "properties"), k))
            elif isinstance(n, list):
                for i, v in enumerate(n):
                    walk(v, depth, stack, _join(path, i))

        walk({k: v for k, v in schema.items() if k != "$defs"}, 0, (), "$")


def _is_nullable(s: dict[str, Any], defs: dict[str, Any]) -> bool:
    t = s.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    if "const" in s and s["const"] is None:
        return True
    if "enum" in s and None in s["enum"]:
        return True
    return any(_is_nullable(b, defs) for b in s.get("anyOf", []) if isinstance(b, dict))


def _nullable(s: dict[str, Any]) -> dict[str, Any]:
    desc = s.get("description")
    inner = {k: v for k, v in s.items() if k != "description"}
    out: dict[str, Any] = {"anyOf": [inner, {"type": "null"}]}
    if desc:
        out["description"] = desc
    return out


def compile_strict_schema(schema: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Compile a JSON Schema into its strict form, or raise `SchemaRejected`."""
    if not isinstance(schema, dict):
        raise SchemaRejected("$", f"a schema must be a JSON object, got {type(schema).__name__}")
    _json_depth_check(schema, limits.max_json_depth)
    try:
        size = len(json.dumps(schema, separators=(",", ":"), default=str))
    except (TypeError, ValueError) as exc:  # keys that are not strings, circular values
        raise SchemaRejected("$", f"not a JSON value: {exc}") from exc
    if size > limits.max_bytes:
        raise SchemaRejected("$", f"schema is {size} bytes, more than the limit of {limits.max_bytes}")
    strict = _Compiler(copy.deepcopy(schema), limits).compile()
    _check_keyword_values(schema)
    return strict


def _check_keyword_values(schema: dict[str, Any]) -> None:
    """The values of the keywords kept (`minLength: "x"`, `description: 7`, ...) against the
    JSON Schema meta-schema: an invalid one would break validation, prompts or the grammar later."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(
        jsonschema.Draft202012Validator.META_SCHEMA).iter_errors(schema))
    if error is not None:
        raise SchemaRejected(error.json_path, f"invalid value: {error.message}"[:300])


def estimate_max_tokens(strict: dict[str, Any], ceiling: int = 2048) -> int:
    """A token budget for one output: generous for the shape of the schema.

    Strings count ~24 tokens, arrays ~6 items, an object open to other keys ~3 of them; the
    budget doubles that and is clamped to [64, ceiling]. Each `$defs` entry is costed once (a
    reference to one being costed counts 8), and a sum stops once past the ceiling: walked along
    every path, a real-world schema (Ansible's, 20 KB) took 48 s here.
    """
    defs = strict.get("$defs", {})
    limit = ceiling // 2 + 1  # any cost past it gives the ceiling
    costed: dict[str, int] = {}
    costing: set[str] = set()

    def total(parts: Iterable[int]) -> int:
        out = 0
        for part in parts:
            out += part
            if out >= limit:
                return limit
        return out

    def ref_cost(name: str) -> int:
        if name in costing:
            return 8
        if name not in costed:
            costing.add(name)
            try:
                costed[name] = cost(defs.get(name))
            finally:
                costing.discard(name)
        return costed[name]

    def cost(n: Any) -> int:
        if not isinstance(n, dict):
            return 4
        if "$ref" in n:
            return ref_cost(def_name(n["$ref"]))
        if "anyOf" in n:
            return max((cost(b) for b in n["anyOf"]), default=4)
        if "enum" in n or "const" in n:
            return 8
        t = n.get("type")
        if t == "object":
            # keys beyond `properties` (an open object of a raw schema): about three, each value capped
            ap = n.get("additionalProperties")
            extra = 3 * (4 + min(cost(ap), 40)) if isinstance(ap, dict) else 0
            return min(limit, 2 + extra + total(4 + cost(v) for v in n.get("properties", {}).values()))
        if t == "array":
            items = min(int(n.get("maxItems", 6)), 6)
            return min(limit, 2 + items * cost(n.get("items")))
        if t == "string":
            return min(int(n.get("maxLength", 96)) // 3 + 2, 40)
        return 6

    return max(64, min(ceiling, 2 * cost(strict)))
