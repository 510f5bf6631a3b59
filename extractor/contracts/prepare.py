"""Prepare a user's raw JSON Schema for a grammar backend (xgrammar, llguidance).

`prepare_schema(raw)` takes any real-world JSON Schema (any draft, any root type) and returns a
`PreparedSchema`: the schema to hand to the grammar engine plus a report of what happens to every
keyword of the user's schema:

- *enforced*: kept in the grammar schema, so every decoded value satisfies it;
- *validated*: a grammar cannot express it (``not``, ``if``/``then``/``else``, ``uniqueItems``,
  ``dependencies``, the exclusivity of ``oneOf``, formats no backend knows, lookaround patterns
  ...): it is dropped from the grammar schema and must be checked after decoding, against the
  ORIGINAL schema;
- *ignored*: annotations and unknown keywords (``title``, ``$comment``, ``x-*``, ``examples``,
  ``readOnly``, ``links``, ``id`` ...). JSON Schema says unknown keywords are annotations, so none
  is ever a reason to refuse.

The grammar schema is self-contained: every ``$ref`` (``#/definitions/..``, ``#/$defs/..``, any
JSON pointer, ``$id``- and ``$anchor``-based ones) is inlined, keywords beside a ``$ref`` are
merged with its target, recursion is unrolled down to a bounded depth (past which the recursive
branch is cut), ``allOf`` is merged into one schema, ``oneOf`` becomes ``anyOf``, keywords beside
an ``anyOf`` are distributed into its branches, and ``{}``/``true`` become "any JSON value" of a
bounded nesting depth. A root that is not an object is wrapped as ``{"value": ...}``
(`PreparedSchema.wrapped`; `PreparedSchema.finish` unwraps the answer).

Fidelity: a property that is not required may be omitted and ``null`` is never added where the
user's schema does not allow it, so a decoded value satisfies the user's schema wherever the
report says the keywords are enforced. ``strict=True`` gives the OpenAI-compatible shape instead
(every property required, the optional ones nullable, objects closed); `PreparedSchema.finish`
removes the nulls that shape added.

A schema is refused (`SchemaRefused`, with the JSON path and a hint) only when no JSON value can
satisfy it or when it breaks a hostile-input limit (`Limits`: nesting, size, properties, enum
count and bytes, regex length, catastrophic or invalid regexes, regex repetition bounds).
"""

from __future__ import annotations

import copy
import json
import math
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jsonschema

from extractor.contracts.compile import Limits as CompilerLimits
from extractor.contracts.schema_walk import def_name, resolve_ref, type_names
from extractor.errors import SchemaRejected

__all__ = [
    "DEFAULT_LIMITS",
    "ENFORCED_FORMATS",
    "Limits",
    "PreparedSchema",
    "SchemaRefused",
    "SchemaReport",
    "check_pattern",
    "prepare_schema",
]


@dataclass(frozen=True)
class Limits(CompilerLimits):
    """The strict compiler's hostile-input limits (`extractor.contracts.compile.Limits`, the one
    place they are defined), plus the bounds used for recursion and for ``{}``."""

    #: properties of all the objects of the schema, definitions included
    max_total_properties: int = 4096
    #: times one `$ref` may be entered again inside itself before the recursive branch is cut
    max_recursion: int = 3
    #: nesting of objects/arrays an unconstrained value (`{}`, `true`, open objects) may have
    max_any_depth: int = 10
    #: bytes of the prepared (inlined) schema; recursion is unrolled less deeply to fit
    max_prepared_bytes: int = 2 * 1024 * 1024
    #: data nesting the prepared schema may reach when `$ref`s and recursion are inlined
    max_inlined_depth: int = 24


DEFAULT_LIMITS: Final = Limits()


class SchemaRefused(SchemaRejected):
    """A schema that no JSON value satisfies or that breaks a hostile-input limit (with a hint how to fix it)."""

    def __init__(self, path: str, reason: str, hint: str = "") -> None:
        super().__init__(path, f"{reason}; hint: {hint}" if hint else reason)
        self.reason = reason
        self.hint = hint


@dataclass(frozen=True)
class SchemaReport:
    """What happens to each keyword of the user's schema; each maps to the JSON paths where it occurs.

    Formats are reported as ``format:<name>`` so that an enforced ``date`` and a validated
    ``regex`` can be told apart.
    """

    enforced: dict[str, list[str]]
    validated: dict[str, list[str]]
    ignored: dict[str, list[str]]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: keyword names per class, and the notes."""
        return {
            "enforced": sorted(self.enforced),
            "validated": sorted(self.validated),
            "ignored": sorted(self.ignored),
            "notes": list(self.notes),
        }

    def fully_enforced(self, keyword: str) -> bool:
        """True when `keyword` is kept by the grammar at every place it occurs."""
        return keyword in self.enforced and keyword not in self.validated


@dataclass(frozen=True)
class PreparedSchema:
    """The schema for the grammar backend, how to read an answer back, and the report."""

    schema: dict[str, Any]
    wrapped: bool
    strict: bool
    report: SchemaReport
    #: the user's schema as given (records are validated against it after decoding)
    original: Any = None
    #: the grammar is only the schema's skeleton from the start (`_skeleton_only`): the rest is validated
    skeleton_only: bool = False
    #: ids of the nullable wrappers strict mode added where the user's schema allows no null; see `finish`
    _added_nulls: frozenset[int] = field(default=frozenset(), repr=False)

    def wrap(self, value: Any) -> Any:
        """The value as the grammar produces it (wrapped in ``{"value": ...}`` for a wrapped root)."""
        return {"value": value} if self.wrapped else value

    def finish(self, record: Any) -> Any:
        """The decoded answer as the user's schema expects it: unwrapped, and in strict mode
        without the nulls strict mode added for optional properties."""
        if self.strict and self._added_nulls:
            record = _drop_added_nulls(self.schema, record, self.schema.get("$defs", {}), self._added_nulls)
        if self.wrapped and isinstance(record, dict):
            return record.get("value")
        return record


# -- keyword classes -----------------------------------------------------------------------------

JSON_TYPES: Final = ("null", "boolean", "object", "array", "number", "string", "integer")

#: formats that both backends turn into grammar (others are validated after decoding)
ENFORCED_FORMATS: Final = frozenset({
    "date", "time", "date-time", "duration", "email", "uuid", "ipv4", "ipv6", "uri", "hostname",
})

_GRAMMAR_KEYWORDS: Final = frozenset({
    "type", "properties", "required", "additionalProperties", "patternProperties", "items", "prefixItems",
    "additionalItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "pattern", "format", "minLength",
    "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
    "minProperties", "maxProperties", "multipleOf",
})
_VALIDATED_KEYWORDS: Final = frozenset({
    "not", "if", "then", "else", "dependencies", "dependentRequired", "dependentSchemas", "uniqueItems",
    "contains", "minContains", "maxContains", "propertyNames", "unevaluatedProperties", "unevaluatedItems",
    "$dynamicRef", "$recursiveRef",
})
_STRUCTURAL: Final = frozenset({"$defs", "definitions", "$schema", "$id", "$anchor", "$dynamicAnchor",
                                "$recursiveAnchor", "$vocabulary", "description"})

#: an unbounded quantifier inside a group that is itself repeated without bound: (a+)+, (a*)*, (a{2,})+
_NESTED_QUANTIFIER: Final = re.compile(r"\((?:[^()\\]|\\.)*(?:[+*]|\{\d+,\})(?:\?)?\)(?:[+*]|\{\d+,\})")
_BACKREF: Final = re.compile(r"\\[1-9]|\\k<")
_LOOKAROUND: Final = re.compile(r"\(\?[=!<]")
_ECMA_ONLY: Final = re.compile(r"\\[pP]\{[A-Za-z_=]+\}|\\u\{[0-9a-fA-F]+\}|\\c[A-Za-z]")
_REPEAT: Final = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")


def pattern_repeats(pattern: str) -> int:
    """The sum of a regex's explicit repetition bounds (`{n}`, `{m,n}`; `{m,}` counts m)."""
    return sum(int(hi) if hi else int(lo) for lo, hi in _REPEAT.findall(pattern))


def check_pattern(pattern: Any, path: str, limits: Limits = DEFAULT_LIMITS) -> bool:
    """Refuse hostile or invalid regexes; return whether a grammar can enforce the pattern.

    Lookaround, backreferences and ECMA-only syntax (``\\p{L}``) are valid but not regular:
    such a pattern is validated after decoding instead (False).
    """
    if not isinstance(pattern, str):
        raise SchemaRefused(path, "invalid value: pattern must be a string", "write the regex as a JSON string")
    if "\x00" in pattern:
        raise SchemaRefused(path, "pattern contains a NUL character", "remove the NUL (\\u0000) from the regex")
    if len(pattern) > limits.max_pattern_length:
        raise SchemaRefused(path, f"pattern longer than {limits.max_pattern_length} characters",
                            "shorten the regex, or use an enum")
    if _NESTED_QUANTIFIER.search(pattern):
        raise SchemaRefused(path, "nested quantifier (catastrophic backtracking), e.g. (a+)+",
                            "remove the quantifier on the group, e.g. (a+)+ -> a+")
    try:
        re.compile(_ECMA_ONLY.sub("x", pattern))
    except re.error as exc:
        raise SchemaRefused(path, f"invalid regular expression: {exc}", "fix the regex (ECMA-262 syntax)") from exc
    return not (_BACKREF.search(pattern) or _LOOKAROUND.search(pattern) or _ECMA_ONLY.search(pattern))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_$][\w$-]*", key) else f"{path}[{json.dumps(key)}]"


def _json_depth_check(value: Any, limit: int) -> None:
    """Refuse JSON nested deeper than `limit` (iteratively: a deep value must not exhaust the stack)."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > limit:
            raise SchemaRefused(path, f"JSON nested deeper than {limit} levels", "flatten the schema")
        if isinstance(node, dict):
            stack.extend((v, _join(path, str(k)), depth + 1) for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, _join(path, i), depth + 1) for i, v in enumerate(node) if isinstance(v, (dict, list)))


# -- the never-matching schema and small helpers ---------------------------------------------------


class _Never:
    """A schema no value satisfies, with the path and reason of its first cause."""

    __slots__ = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason


Node = dict[str, Any] | _Never

#: schema nodes one preparation may visit (inlining `$ref`s repeats them) before recursion is unrolled less
#: (about 40 us each here; of the 565 real-world dev schemas, none that fits took more than 25,000,
#: and a recursive one past the budget is walked once per recursion depth tried)
_NODE_BUDGET: Final = 50_000


class _TooBig(Exception):
    """The inlined schema grows past the budget: retry with less recursion."""

_ANY_TYPES: Final = ("null", "boolean", "number", "string", "array", "object")


def _types_of(node: dict[str, Any]) -> list[str] | None:
    t = node.get("type")
    if t is None:
        return None
    return list(t) if isinstance(t, list) else [t]


def _intersect_types(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    out = [t for t in a if t in b or (t == "integer" and "number" in b)]
    out += [t for t in b if t == "integer" and "number" in a and t not in out]
    return out


def _set_types(node: dict[str, Any], types: list[str] | None) -> None:
    if types is None:
        node.pop("type", None)
    else:
        uniq = list(dict.fromkeys(types))
        if "number" in uniq and "integer" in uniq:
            uniq.remove("integer")
        node["type"] = uniq[0] if len(uniq) == 1 else uniq


_OBJECT_KW: Final = ("properties", "required", "additionalProperties", "patternProperties", "minProperties",
                     "maxProperties")
_ARRAY_KW: Final = ("items", "prefixItems", "minItems", "maxItems")
_STRING_KW: Final = ("pattern", "format", "minLength", "maxLength")
_NUMBER_KW: Final = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def _json_equal(a: Any, b: Any) -> bool:
    return (json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool) and a == b)


# -- the preparer ----------------------------------------------------------------------------------


class _Preparer:
    def __init__(self, root: Any, limits: Limits, max_recursion: int) -> None:
        self.root = root
        self.limits = limits
        self.max_recursion = max_recursion
        self.enforced: dict[str, list[str]] = {}
        self.validated: dict[str, list[str]] = {}
        self.ignored: dict[str, list[str]] = {}
        self.notes: list[str] = []
        self.repeats = 0
        self.seen_patterns: set[str] = set()
        self.size = 0
        self.legacy = _is_legacy_draft(root)
        self.ids: dict[str, Any] = {}
        self.anchors: dict[str, Any] = {}
        base = _id_of(root, self.legacy) or ""
        self.root_base = urllib.parse.urldefrag(base)[0]
        self._index_ids(root, self.root_base)
        self.cut_recursion = False
        self.uses_any = False
        self.recursion_hits = 0
        self.memo: dict[int, Node] = {}
        self.defs_out: dict[str, dict[str, Any]] = {}

    # -- bookkeeping

    def note(self, table: dict[str, list[str]], key: str, path: str) -> None:
        paths = table.setdefault(key, [])
        if len(paths) < 20:
            paths.append(path)

    def _index_ids(self, node: Any, base: str) -> None:
        stack: list[tuple[Any, str]] = [(node, base)]
        while stack:
            n, b = stack.pop()
            if isinstance(n, dict):
                own = _id_of(n, self.legacy)
                if own is not None:
                    b = urllib.parse.urljoin(b, own)
                    doc, frag = urllib.parse.urldefrag(b)
                    if frag and not frag.startswith("/"):
                        self.anchors[f"{doc}#{frag}"] = n
                    else:
                        self.ids.setdefault(doc, n)
                    b = doc
                anchor = n.get("$anchor")
                if isinstance(anchor, str):
                    self.anchors[f"{b}#{anchor}"] = n
                for k, v in n.items():
                    if k in ("enum", "const", "examples", "default"):
                        continue
                    if isinstance(v, (dict, list)):
                        stack.append((v, b))
            elif isinstance(n, list):
                stack.extend((v, b) for v in n if isinstance(v, (dict, list)))

    def resolve(self, ref: Any, base: str, path: str) -> tuple[Any, str, str]:
        """(target, its base URI, its JSON path) of a `$ref`."""
        if not isinstance(ref, str):
            raise SchemaRefused(path, "invalid value: $ref must be a string", "write the reference as '#/$defs/Name'")
        full = urllib.parse.urljoin(base, ref) if base else ref
        doc_uri, frag = urllib.parse.urldefrag(full)
        if doc_uri in ("", self.root_base) or (not base and doc_uri == ""):
            doc: Any = self.root
            doc_path = "$"
        elif doc_uri in self.ids:
            doc = self.ids[doc_uri]
            doc_path = doc_uri
        else:
            raise SchemaRefused(path, f"only local refs are supported, got {ref!r}",
                                "copy the referenced schema into $defs and point to '#/$defs/Name'")
        if frag and not frag.startswith("/"):
            target = self.anchors.get(f"{doc_uri}#{frag}")
            if target is None:
                raise SchemaRefused(path, f"$ref points to a missing anchor {frag!r}", "add the $anchor or fix the $ref")
            return target, doc_uri, f"{doc_path}#{frag}"
        node = doc
        node_path = doc_path
        for raw in frag.split("/")[1:] if frag else []:
            part = urllib.parse.unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
                node_path = _join(node_path, part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                node_path = _join(node_path, int(part))
            else:
                raise SchemaRefused(path, f"$ref points to a missing definition {ref!r}",
                                    "add the definition or fix the $ref")
        return node, doc_uri or self.root_base, node_path

    # -- nodes

    def node(self, s: Any, path: str, depth: int, base: str, stack: tuple[int, ...]) -> Node:
        """The prepared form of schema `s` at JSON path `path`, `depth` data levels down."""
        if s is True:
            return self.any_value(depth)
        if s is False:
            return _Never(path, "the schema `false` matches nothing")
        if not isinstance(s, dict):
            raise SchemaRefused(path, f"a schema must be a JSON object or a boolean, got {type(s).__name__}",
                                "use {} for any value")
        if depth > self.limits.max_inlined_depth:
            self.cut_recursion = True
            return _Never(path, f"nesting deeper than {self.limits.max_inlined_depth} through $ref")
        self.size += 1
        if self.size > _NODE_BUDGET:
            raise _TooBig
        own = _id_of(s, self.legacy)
        if own is not None:
            base = urllib.parse.urldefrag(urllib.parse.urljoin(base, own))[0]

        out: dict[str, Any] = {}
        parts: list[Node] = []
        for key, value in s.items():
            kpath = _join(path, key)
            if key in _GRAMMAR_KEYWORDS:
                continue  # handled below
            if key in _VALIDATED_KEYWORDS:
                self.note(self.validated, key, kpath)
            elif key == "description":
                if not isinstance(value, str):
                    raise SchemaRefused(kpath, "invalid value: description must be a string",
                                        "write the description as text")
                out["description"] = value
            elif key in _STRUCTURAL:
                pass
            else:
                self.note(self.ignored, key, kpath)

        if "$ref" in s:
            ref = s["$ref"]
            target, tbase, tpath = self.resolve(ref, base, _join(path, "$ref"))
            self.note(self.enforced, "$ref", _join(path, "$ref"))
            key_id = id(target)
            if key_id in stack:
                self.recursion_hits += 1
            if stack.count(key_id) >= self.max_recursion:
                self.cut_recursion = True
                return _Never(path, f"recursion through {ref!r} cut at depth {self.max_recursion}")
            parts.append(self.ref_node(target, tpath, depth, tbase, (*stack, key_id)))

        local = self.local(s, path, depth, base, stack)
        parts.append(local)
        for i, branch in enumerate(s.get("allOf", []) if isinstance(s.get("allOf"), list) else []):
            parts.append(self.node(branch, _join(_join(path, "allOf"), i), depth, base, stack))
        if "allOf" in s:
            if not isinstance(s["allOf"], list) or not s["allOf"]:
                raise SchemaRefused(_join(path, "allOf"), "invalid value: allOf must be a non-empty list",
                                    "list the schemas to combine")
            self.note(self.enforced, "allOf", _join(path, "allOf"))

        merged: Node = {}
        for p in parts:
            merged = self.merge(merged, p, path)
        if isinstance(merged, _Never):
            return merged
        if "description" in out and "description" not in merged:
            merged["description"] = out["description"]
        return self.finish_node(merged, path, depth)

    def ref_node(self, target: Any, path: str, depth: int, base: str, stack: tuple[int, ...]) -> Node:
        """A `$ref`'s target: prepared once and shared through `$defs` when it involves no recursion
        (recursive ones are unrolled in place, down to `max_recursion`)."""
        key_id = stack[-1]
        if key_id in self.memo:
            return self.memo[key_id]
        hits, cut = self.recursion_hits, self.cut_recursion
        result = self.node(target, path, depth, base, stack)
        if self.recursion_hits != hits or self.cut_recursion != cut:
            return result
        if isinstance(result, dict) and not _is_any(result) and len(json.dumps(_to_validation_schema(result))) > 200:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.rsplit(".", 1)[-1])[:60] or "def"
            while name in self.defs_out or name.startswith("any_json"):
                name += "_"
            self.defs_out[name] = result
            result = {"$ref": f"#/$defs/{name}"}
        self.memo[key_id] = result
        return result

    def local(self, s: dict[str, Any], path: str, depth: int, base: str, stack: tuple[int, ...]) -> Node:
        """The keywords of `s` itself (without `$ref` and `allOf`)."""
        out: dict[str, Any] = {}
        enf = self.enforced

        types = s.get("type")
        if types is not None:
            tlist = types if isinstance(types, list) else [types]
            for t in tlist:
                if t == "any":  # draft-03
                    tlist = list(_ANY_TYPES)
                    break
                if not isinstance(t, str) or t not in JSON_TYPES:
                    raise SchemaRefused(_join(path, "type"), f"unknown type {t!r}",
                                        f"use one of {', '.join(JSON_TYPES)}")
            if not tlist:
                return _Never(_join(path, "type"), "an empty list of types matches nothing")
            _set_types(out, list(tlist))
            self.note(enf, "type", _join(path, "type"))

        if "enum" in s:
            enum = s["enum"]
            epath = _join(path, "enum")
            if not isinstance(enum, list):
                raise SchemaRefused(epath, "invalid value: enum must be a list", "list the allowed values")
            if len(enum) > self.limits.max_enum:
                raise SchemaRefused(epath, f"{len(enum)} values, more than the limit of {self.limits.max_enum}",
                                    "use a pattern or a plain string instead")
            size = len(json.dumps(enum, separators=(",", ":"), default=str))
            if size > self.limits.max_enum_bytes:
                raise SchemaRefused(epath, f"values of {size} bytes, more than the limit of "
                                    f"{self.limits.max_enum_bytes}", "shorten the values or use a pattern")
            if not enum:
                return _Never(epath, "an empty enum matches nothing")
            out["enum"] = list(enum)
            self.note(enf, "enum", epath)
        if "const" in s:
            out["enum"] = [s["const"]] if "enum" not in out else [
                v for v in out["enum"] if _json_equal(v, s["const"])]
            self.note(enf, "const", _join(path, "const"))

        for key in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"):
            if key in s:
                v = s[key]
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise SchemaRefused(_join(path, key), f"invalid value: {key} must be a non-negative integer",
                                        f"write {key} as a whole number")
                out[key] = v
                self.note(enf, key, _join(path, key))
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
            if key in s:
                v = s[key]
                if isinstance(v, bool) and key.startswith("exclusive"):
                    continue  # draft-04 boolean form, folded below
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    raise SchemaRefused(_join(path, key), f"invalid value: {key} must be a number",
                                        f"write {key} as a number")
                if key == "multipleOf" and v <= 0:
                    raise SchemaRefused(_join(path, key), "invalid value: multipleOf must be greater than 0",
                                        "use a positive number")
                out[key] = v
        for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if s.get(key) is True and bound in out:
                out[key] = out.pop(bound)
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in s:
                self.note(enf, key, _join(path, key))
        if "multipleOf" in out:
            m = out["multipleOf"]
            if isinstance(m, int) or (isinstance(m, float) and m.is_integer()):
                out["multipleOf"] = int(m)
                self.note(enf, "multipleOf", _join(path, "multipleOf"))
            else:  # fractional steps: a grammar over decimal digits cannot check them exactly
                del out["multipleOf"]
                self.note(self.validated, "multipleOf", _join(path, "multipleOf"))

        if "pattern" in s:
            ppath = _join(path, "pattern")
            enforceable = check_pattern(s["pattern"], ppath, self.limits)
            if s["pattern"] not in self.seen_patterns:
                self.seen_patterns.add(s["pattern"])
                self.repeats += pattern_repeats(s["pattern"])
            if self.repeats > self.limits.max_pattern_repeats:
                raise SchemaRefused(ppath, "the schema's patterns repeat more than "
                                    f"{self.limits.max_pattern_repeats} times in all ({{m,n}} bounds add up)",
                                    "use smaller {m,n} bounds or fewer patterns")
            if enforceable:
                out["pattern"] = s["pattern"]
                self.note(enf, "pattern", ppath)
            else:
                self.note(self.validated, "pattern", ppath)
        if "format" in s:
            fmt = s["format"]
            fpath = _join(path, "format")
            if not isinstance(fmt, str):
                raise SchemaRefused(fpath, "invalid value: format must be a string", "write the format's name")
            if fmt in ENFORCED_FORMATS:
                out["format"] = fmt
                self.note(enf, f"format:{fmt}", fpath)
            else:
                self.note(self.validated, f"format:{fmt}", fpath)

        # objects
        props_in = s.get("properties")
        if props_in is not None:
            if not isinstance(props_in, dict):
                raise SchemaRefused(_join(path, "properties"), "invalid value: properties must be an object",
                                    "map each property name to its schema")
            self.note(enf, "properties", _join(path, "properties"))
            props: dict[str, Node] = {}
            for key, sub in props_in.items():
                props[key] = self.node(sub, _join(_join(path, "properties"), key), depth + 1, base, stack)
            out["properties"] = props
        if "required" in s:
            req = s["required"]
            rpath = _join(path, "required")
            if isinstance(req, bool):  # draft-03 `required: true` on the property: an annotation for us
                self.note(self.ignored, "required", rpath)
            else:
                if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
                    raise SchemaRefused(rpath, "invalid value: required must be a list of property names; "
                                        f"{req!r} is required but not a property", "list the names as strings")
                out["required"] = list(dict.fromkeys(req))
                self.note(enf, "required", rpath)
        if "patternProperties" in s:
            pp = s["patternProperties"]
            pppath = _join(path, "patternProperties")
            if not isinstance(pp, dict):
                raise SchemaRefused(pppath, "invalid value: patternProperties must be an object",
                                    "map each regex to a schema")
            compiled_pp: dict[str, Node] = {}
            for pat, sub in pp.items():
                enforceable = check_pattern(pat, _join(pppath, pat), self.limits)
                if not enforceable:
                    self.note(self.validated, "patternProperties", pppath)
                    compiled_pp = {}
                    break
                compiled_pp[pat] = self.node(sub, _join(pppath, pat), depth + 1, base, stack)
            else:
                self.note(enf, "patternProperties", pppath)
            if compiled_pp:
                out["patternProperties"] = compiled_pp
        if "additionalProperties" in s:
            ap = s["additionalProperties"]
            appath = _join(path, "additionalProperties")
            if "patternProperties" in s and "patternProperties" not in out and ap is not True:
                self.note(self.validated, "additionalProperties", appath)  # beside unenforceable patterns
            else:
                out["additionalProperties"] = self.node(ap, appath, depth + 1, base, stack)
                self.note(enf, "additionalProperties", appath)

        # arrays
        items = s.get("items")
        if isinstance(items, list):  # draft-04 to 2019 tuple form
            out["prefixItems"] = [self.node(b, _join(_join(path, "items"), i), depth + 1, base, stack)
                                  for i, b in enumerate(items)]
            self.note(enf, "items", _join(path, "items"))
            if "additionalItems" in s:
                out["items"] = self.node(s["additionalItems"], _join(path, "additionalItems"), depth + 1, base,
                                         stack)
                self.note(enf, "additionalItems", _join(path, "additionalItems"))
        elif items is not None:
            out["items"] = self.node(items, _join(path, "items"), depth + 1, base, stack)
            self.note(enf, "items", _join(path, "items"))
            if "additionalItems" in s:
                self.note(self.ignored, "additionalItems", _join(path, "additionalItems"))
        elif "additionalItems" in s:
            self.note(self.ignored, "additionalItems", _join(path, "additionalItems"))
        if "prefixItems" in s:
            pi = s["prefixItems"]
            if not isinstance(pi, list):
                raise SchemaRefused(_join(path, "prefixItems"), "invalid value: prefixItems must be a list",
                                    "list one schema per position")
            out["prefixItems"] = [self.node(b, _join(_join(path, "prefixItems"), i), depth + 1, base, stack)
                                  for i, b in enumerate(pi)]
            self.note(enf, "prefixItems", _join(path, "prefixItems"))

        # unions
        branches: list[Node] | None = None
        for comb in ("anyOf", "oneOf"):
            if comb not in s:
                continue
            cpath = _join(path, comb)
            raw = s[comb]
            if not isinstance(raw, list) or not raw:
                raise SchemaRefused(cpath, f"invalid value: {comb} must be a non-empty list",
                                    "list the alternatives")
            these = [self.node(b, _join(cpath, i), depth, base, stack) for i, b in enumerate(raw)]
            self.note(enf, comb, cpath)
            if comb == "oneOf":
                self.note(self.validated, "oneOf", cpath)  # "exactly one" is checked after decoding
            if branches is None:
                branches = these
            else:  # anyOf and oneOf side by side: the product of their branches
                branches = [self.merge(a, b, cpath) for a in branches for b in these]
        if branches is not None:
            live = [b for b in branches if not isinstance(b, _Never)]
            if not live:
                first = branches[0]
                assert isinstance(first, _Never)
                return _Never(first.path, f"no alternative can match ({first.reason})")
            out["anyOf"] = live
        return out

    # -- merging (allOf, $ref siblings, anyOf distribution)

    def merge(self, a: Node, b: Node, path: str) -> Node:
        """The schema of values that satisfy both `a` and `b` (as closely as a grammar can say it)."""
        a = self.deref(a, path)
        b = self.deref(b, path)
        if isinstance(a, _Never):
            return a
        if isinstance(b, _Never):
            return b
        if not a or _is_any(a):
            return dict(b)
        if not b or _is_any(b):
            return dict(a)
        if "anyOf" in a or "anyOf" in b:
            a_alts = a.get("anyOf", [None])
            b_alts = b.get("anyOf", [None])
            rest_a = {k: v for k, v in a.items() if k != "anyOf"}
            rest_b = {k: v for k, v in b.items() if k != "anyOf"}
            if len(a_alts) * len(b_alts) > 64:
                self.note(self.validated, "allOf", path)  # too many combinations: keep a's union only
                b_alts = [None]
            base = self.merge_plain(rest_a, rest_b, path)
            if isinstance(base, _Never):
                return base
            combos: list[Node] = []
            for x in a_alts:
                for y in b_alts:
                    m: Node = base
                    if x is not None:
                        m = self.merge(m, x, path)
                    if y is not None:
                        m = self.merge(m, y, path)
                    combos.append(m)
            live = [c for c in combos if not isinstance(c, _Never)]
            if not live:
                first = combos[0]
                assert isinstance(first, _Never)
                return first
            if len(live) == 1:
                return live[0]
            out: dict[str, Any] = {"anyOf": live}
            if "description" in base:
                out["description"] = base["description"]
            return out
        return self.merge_plain(a, b, path)

    def deref(self, n: Any, path: str) -> Node:
        """`n` with a boolean schema or a reference to a shared definition replaced by its content."""
        if n is False:
            return _Never(path, "the schema `false` matches nothing")
        if n is True:
            return {}
        if isinstance(n, dict) and "$ref" in n and not _is_any(n):
            content = self.defs_out[def_name(n["$ref"])]
            return {**content, **({"description": n["description"]} if "description" in n else {})}
        assert isinstance(n, (dict, _Never))
        return n

    def merge_plain(self, a: dict[str, Any], b: dict[str, Any], path: str) -> Node:
        out = dict(a)
        types = _intersect_types(_types_of(a), _types_of(b))
        if types is not None and not types:
            return _Never(path, f"the types {a.get('type')!r} and {b.get('type')!r} have nothing in common")
        _set_types(out, types)
        for key, value in b.items():
            if key == "type":
                continue
            if key not in out:
                out[key] = value
                continue
            mine = out[key]
            if key in ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum"):
                out[key] = max(mine, value)
            elif key in ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum"):
                out[key] = min(mine, value)
            elif key == "multipleOf":
                out[key] = mine * value // math.gcd(mine, value) if isinstance(mine, int) and isinstance(
                    value, int) else mine
            elif key == "required":
                out[key] = list(dict.fromkeys([*mine, *value]))
            elif key == "enum":
                out[key] = [v for v in mine if any(_json_equal(v, w) for w in value)]
                if not out[key]:
                    return _Never(path, "the allowed values (enum/const) have nothing in common")
            elif key in ("pattern", "format"):
                if mine != value:
                    self.note(self.validated, key if key == "pattern" else f"format:{value}", path)
            elif key == "description":
                pass
            elif key == "properties":
                props = dict(mine)
                for name, sub in value.items():
                    props[name] = self.merge(props[name], sub, _join(path, name)) if name in props else sub
                out[key] = props
            elif key == "patternProperties":
                pp = dict(mine)
                for pat, sub in value.items():
                    pp[pat] = self.merge(pp[pat], sub, path) if pat in pp else sub
                out[key] = pp
            elif key in ("additionalProperties", "items"):
                out[key] = self.merge(mine, value, path)
            elif key == "prefixItems":
                longer, shorter = (mine, value) if len(mine) >= len(value) else (value, mine)
                out[key] = [self.merge(x, shorter[i], path) if i < len(shorter) else x
                            for i, x in enumerate(longer)]
            else:
                out[key] = value
        # a property one side closes off with additionalProperties
        for side, other in ((a, b), (b, a)):
            ap = side.get("additionalProperties")
            if ap is None or "properties" not in other:
                continue
            own = side.get("properties", {})
            pats = side.get("patternProperties", {})
            props = dict(out.get("properties", {}))
            for name in other["properties"]:
                if name not in own and not any(re.search(p, name) for p in pats):
                    props[name] = self.merge(props[name], ap, _join(path, name))
            out["properties"] = props
        return out

    # -- normalizing one merged node

    def finish_node(self, n: dict[str, Any], path: str, depth: int) -> Node:
        """Check a merged node for contradictions, infer its type, and distribute it into its anyOf."""
        if "$ref" in n:
            return n
        if "anyOf" in n:
            rest = {k: v for k, v in n.items() if k not in ("anyOf", "description")}
            if rest:
                alts = [self.merge(rest, b, path) for b in n["anyOf"]]
                alts = [self.finish_node(b, path, depth) if isinstance(b, dict) else b for b in alts]
            else:
                alts = list(n["anyOf"])
            live = [b for b in alts if not isinstance(b, _Never)]
            if not live:
                first = alts[0]
                assert isinstance(first, _Never)
                return first
            flat: list[dict[str, Any]] = []
            for b in live:
                assert isinstance(b, dict)
                if set(b) <= {"anyOf", "description"} and "anyOf" in b:
                    flat.extend(b["anyOf"])
                else:
                    flat.append(b)
            if any(not _constrains(b) for b in flat):
                return self.any_value(depth, n.get("description"))
            if len(flat) == 1:
                only = dict(flat[0])
                if "description" in n:
                    only.setdefault("description", n["description"])
                return only
            out: dict[str, Any] = {"anyOf": flat}
            if "description" in n:
                out["description"] = n["description"]
            return out

        if "enum" in n:
            return self.finish_enum(n, path)

        types = _types_of(n)
        if types is None:
            inferred = [t for t, kws in (("object", _OBJECT_KW), ("array", _ARRAY_KW), ("string", _STRING_KW),
                                         ("number", _NUMBER_KW)) if any(k in n for k in kws)]
            if not inferred:
                return self.any_value(depth, n.get("description"))
            # JSON Schema would let values of other types through; a schema with only object keywords
            # means an object, and generating one is what the user wants (a deliberate narrowing)
            types = inferred
            if len(types) > 1:
                alts = [self.finish_node(_only_type(n, t), path, depth) for t in types]
                live = [b for b in alts if not isinstance(b, _Never)]
                if not live:
                    first = alts[0]
                    assert isinstance(first, _Never)
                    return first
                out = {"anyOf": live}
                if "description" in n:
                    out["description"] = n["description"]
                return out
            n = {**n, "type": types[0]}
        if len(types) > 1 and any(k in n for k in (*_OBJECT_KW, *_ARRAY_KW, *_STRING_KW, *_NUMBER_KW)):
            alts = [self.finish_node(_only_type(n, t), path, depth) for t in types]
            live = [b for b in alts if not isinstance(b, _Never)]
            if not live:
                first = alts[0]
                assert isinstance(first, _Never)
                return first
            if len(live) == 1:
                return live[0]
            out = {"anyOf": live}
            if "description" in n:
                out["description"] = n["description"]
            return out
        n = _only_type(n, types[0]) if len(types) == 1 else n
        t = types[0] if len(types) == 1 else None
        if t == "object":
            return self.finish_object(n, path, depth)
        if t == "array":
            return self.finish_array(n, path, depth)
        if t in ("string",):
            if n.get("minLength", 0) > n.get("maxLength", math.inf):
                return _Never(path, "minLength is greater than maxLength")
        if t in ("number", "integer"):
            return self.finish_number(n, path, t)
        return n

    def finish_enum(self, n: dict[str, Any], path: str) -> Node:
        rest = {k: v for k, v in n.items() if k not in ("enum", "description")}
        values = list(n["enum"])
        if rest:
            checkable = _to_validation_schema(rest)
            try:
                validator = jsonschema.Draft202012Validator(checkable)
                values = [v for v in values if validator.is_valid(v)]
            except Exception:
                pass
        if not values:
            return _Never(_join(path, "enum"), "no value of the enum satisfies the schema's other keywords")
        out: dict[str, Any] = {"enum": values}
        if "description" in n:
            out["description"] = n["description"]
        return out

    def finish_number(self, n: dict[str, Any], path: str, t: str) -> Node:
        lo = max((n.get(k, -math.inf) for k in ("minimum", "exclusiveMinimum")), default=-math.inf)
        hi = min((n.get(k, math.inf) for k in ("maximum", "exclusiveMaximum")), default=math.inf)
        if lo > hi or (lo == hi and ("exclusiveMinimum" in n or "exclusiveMaximum" in n)):
            return _Never(path, "the minimum is greater than the maximum")
        if t == "integer" and math.isfinite(lo) and math.isfinite(hi) and math.floor(hi) < math.ceil(lo):
            return _Never(path, "no integer lies between the minimum and the maximum")
        if "multipleOf" in n and t == "number":
            # an integer step on a number: only integers are multiples of it
            n = {**n, "type": "integer"}
        return n

    def finish_object(self, n: dict[str, Any], path: str, depth: int) -> Node:
        props: dict[str, Node] = dict(n.get("properties", {}))
        required: list[str] = list(n.get("required", []))
        ap: Node | None = n.get("additionalProperties")
        pats: dict[str, Node] = {k: v for k, v in n.get("patternProperties", {}).items() if not isinstance(v, _Never)}
        for name in required:
            if name not in props:
                matching = [v for p, v in pats.items() if re.search(p, name)]
                if matching:
                    sub: Node = {}
                    for m in matching:
                        sub = self.merge(sub, m, path)
                    props[name] = sub if sub else self.any_value(depth + 1)
                elif ap is None:
                    props[name] = self.any_value(depth + 1)
                elif isinstance(ap, _Never):
                    return _Never(_join(path, "required"), f"{name!r} is required but no property may be named so")
                else:
                    props[name] = ap
        out: dict[str, Any] = {k: v for k, v in n.items() if k not in ("properties", "required",
                                                                        "additionalProperties", "patternProperties")}
        live: dict[str, Any] = {}
        for name, sub in props.items():
            if isinstance(sub, _Never):
                if name in required:
                    return _Never(sub.path, f"the required property {name!r} can have no value: {sub.reason}")
                continue  # may simply be left out
            live[name] = sub
        out["type"] = "object"
        if live:
            out["properties"] = live
        if required:
            out["required"] = required
        if pats:
            out["patternProperties"] = pats
        if ap is None:  # marked: `_close_declared` closes it where the object declares properties
            out["additionalProperties"] = {**self.any_value(depth + 1), _OPEN_BY_DEFAULT: True}
        elif isinstance(ap, _Never):
            out["additionalProperties"] = False
        else:
            out["additionalProperties"] = ap
        if out.get("minProperties", 0) > out.get("maxProperties", math.inf):
            return _Never(path, "minProperties is greater than maxProperties")
        if len(required) > out.get("maxProperties", math.inf):
            return _Never(path, "more properties are required than maxProperties allows")
        if out["additionalProperties"] is False and not pats and out.get("minProperties", 0) > len(live):
            return _Never(path, "minProperties is more than the properties the object may have")
        return out

    def finish_array(self, n: dict[str, Any], path: str, depth: int) -> Node:
        out = dict(n)
        prefix = list(out.get("prefixItems", []))
        items = out.get("items")
        min_items = out.get("minItems", 0)
        for i, sub in enumerate(prefix):
            if isinstance(sub, _Never):
                if i < min_items:
                    return _Never(sub.path, f"item {i} is required but can have no value: {sub.reason}")
                out["maxItems"] = min(out.get("maxItems", i), i)
                prefix = prefix[:i]
                break
        if "prefixItems" in out:
            if prefix:
                out["prefixItems"] = prefix
            else:
                del out["prefixItems"]
        if isinstance(items, _Never):
            out.pop("items")
            out["maxItems"] = min(out.get("maxItems", len(prefix)), len(prefix))
            if min_items > out["maxItems"]:
                return _Never(items.path, f"{min_items} items are required but they can have no value: {items.reason}")
            if prefix:
                out["items"] = False
        elif items is None and ("prefixItems" in out or out.get("maxItems", 1) > 0):
            out["items"] = self.any_value(depth + 1)
        if min_items > out.get("maxItems", math.inf):
            return _Never(path, "minItems is greater than maxItems")
        if out.get("maxItems") == 0:
            out.pop("items", None)
            out.pop("prefixItems", None)
        return out

    # -- unconstrained values

    def any_value(self, depth: int, description: Any = None) -> dict[str, Any]:
        """Any JSON value, nested at most `max_any_depth` levels (`{}` and `true`): a `$ref` to the
        one shared definition (descriptions of such values are dropped)."""
        del depth, description
        self.uses_any = True
        return dict(ANY_REF)


#: the reference every unconstrained value becomes; its definition is added to the root's `$defs`
ANY_REF: Final = {"$ref": "#/$defs/any_json"}


_ANY_PREFIX: Final = "#/$defs/any_json"


def _is_any(n: Any) -> bool:
    return isinstance(n, dict) and n.get("$ref") == ANY_REF["$ref"]


def _bounded_any(levels: int) -> dict[str, Any]:
    """Any JSON value nested at most `levels` levels, inline (its size doubles per level: for
    small bounds; `_any_defs` for the shared definition)."""
    scalars: list[dict[str, Any]] = [{"type": "null"}, {"type": "boolean"}, {"type": "number"}, {"type": "string"}]
    if levels <= 0:
        return {"type": ["null", "boolean", "number", "string"]}
    inner = _bounded_any(levels - 1)
    return {"anyOf": [*scalars, {"type": "array", "items": inner},
                      {"type": "object", "additionalProperties": inner}]}


def _any_defs(levels: int) -> dict[str, dict[str, Any]]:
    """`any_json` (any JSON value nested at most `levels` levels) as one definition per level, each
    referring to the next (`any_json_1` ...): its size grows with the bound, not twice per level.
    Real documents nest deeper than 3 under open objects (a Kubernetes manifest's
    `spec.template.metadata.labels`)."""
    defs: dict[str, dict[str, Any]] = {}
    for level in range(levels + 1):
        name = "any_json" if level == 0 else f"any_json_{level}"
        if level == levels:
            defs[name] = {"type": ["null", "boolean", "number", "string"]}
            continue
        inner = {"$ref": f"#/$defs/any_json_{level + 1}"}
        defs[name] = {"anyOf": [{"type": "null"}, {"type": "boolean"}, {"type": "number"}, {"type": "string"},
                                {"type": "array", "items": inner}, {"type": "object", "additionalProperties": inner}]}
    return defs


#: marks an `additionalProperties` the user's schema left out (`_close_declared` removes it)
_OPEN_BY_DEFAULT: Final = "x-open-by-default"


def _close_declared(node: Any, close: bool = True) -> int:
    """Close, in place, every object of a prepared schema that declares properties and leaves
    `additionalProperties` out (no `patternProperties` either): the grammar then writes only the
    declared ones (an explicit `additionalProperties: true` or schema keeps the object open), and
    drop the marks `finish_object` left. Every such record is valid against the open original (closing
    only removes values from what the grammar admits, and no required key or `minProperties` is
    left unsatisfiable). Left open, SmolLM2 wrote key after key of the any-JSON
    `additionalProperties` until max_tokens on real-world schemas of a few properties (on the
    H200, three attempts cut at 64, 128 and 256 tokens). Returns how many objects were closed.
    With `close` False only the marks are dropped: the grammar is the contract's, open objects open."""
    closed = 0
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
            continue
        if not isinstance(n, dict):
            continue
        props, ap = n.get("properties"), n.get("additionalProperties")
        if isinstance(ap, dict) and ap.pop(_OPEN_BY_DEFAULT, None) and close and (
                isinstance(props, dict) and props and not n.get("patternProperties")
                and n.get("minProperties", 0) <= len(props) and all(name in props for name in n.get("required", []))):
            n["additionalProperties"] = False
            closed += 1
        stack.extend(v for k, v in n.items() if k not in ("enum", "const", "default", "examples"))
    return closed


def _constrains(n: dict[str, Any]) -> bool:
    return not _is_any(n) and any(k != "description" for k in n)


def _only_type(n: dict[str, Any], t: str) -> dict[str, Any]:
    """`n` restricted to type `t`: the keywords of other types dropped."""
    drop: set[str] = set()
    if t != "object":
        drop.update(_OBJECT_KW)
    if t != "array":
        drop.update(_ARRAY_KW)
    if t != "string":
        drop.update(_STRING_KW)
    if t not in ("number", "integer"):
        drop.update(_NUMBER_KW)
    out = {k: v for k, v in n.items() if k not in drop}
    out["type"] = t
    return out


def _to_validation_schema(n: Any) -> Any:
    """A prepared node as a schema jsonschema can check (never-nodes as `false`)."""
    if isinstance(n, _Never):
        return False
    if isinstance(n, dict):
        return {k: _to_validation_schema(v) for k, v in n.items()}
    if isinstance(n, list):
        return [_to_validation_schema(v) for v in n]
    return n


def _is_legacy_draft(root: Any) -> bool:
    if not isinstance(root, dict):
        return False
    s = root.get("$schema")
    return isinstance(s, str) and any(f"draft-0{i}" in s for i in (3, 4))


def _id_of(node: dict[str, Any], legacy: bool) -> str | None:
    own = node.get("$id")
    if isinstance(own, str):
        return own
    old = node.get("id")
    if legacy and isinstance(old, str) and not isinstance(node.get("type"), dict):
        return old
    return None


# -- strict mode and nulls -------------------------------------------------------------------------


def _allows_null(n: Any) -> bool:
    if not isinstance(n, dict):
        return n is True
    t = n.get("type")
    if t is None and "enum" not in n and "anyOf" not in n:
        return True
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    if "enum" in n and any(v is None for v in n["enum"]):
        return True
    return any(_allows_null(b) for b in n.get("anyOf", []))


def _deref_schema(n: Any, defs: dict[str, Any]) -> Any:
    while isinstance(n, dict) and isinstance(n.get("$ref"), str) and n["$ref"].startswith("#/$defs/"):
        n = defs.get(def_name(n["$ref"]), {})
    return n


def _strict(n: Any, defs: dict[str, Any], added: set[int]) -> Any:
    """OpenAI-compatible shape: every property required (optional ones nullable), objects closed.
    The ids of the nullable wrappers it adds go into `added`."""
    if isinstance(n, list):
        return [_strict(v, defs, added) for v in n]
    if not isinstance(n, dict):
        return n
    out = dict(n)
    if "anyOf" in out:
        out["anyOf"] = [_strict(b, defs, added) for b in out["anyOf"]]
    if "items" in out:
        out["items"] = _strict(out["items"], defs, added)
    if "prefixItems" in out:
        out["prefixItems"] = [_strict(b, defs, added) for b in out["prefixItems"]]
    if out.get("type") == "object" and "properties" in out:
        required = set(out.get("required", []))
        props = {}
        for name, sub in out["properties"].items():
            sub = _strict(sub, defs, added)
            if name not in required and not _allows_null(_deref_schema(sub, defs)):
                desc = sub.get("description") if isinstance(sub, dict) else None
                inner = {k: v for k, v in sub.items() if k != "description"}
                sub = {"anyOf": [inner, {"type": "null"}]}
                if desc:
                    sub["description"] = desc
                added.add(id(sub))
            props[name] = sub
        out["properties"] = props
        out["required"] = list(props)
        out["additionalProperties"] = False
        out.pop("patternProperties", None)
    return out


_JSON_TYPE_OF: Final = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
                        list: "array", dict: "object"}


def _branch_for(alts: list[Any], value: Any, defs: dict[str, Any]) -> Any:
    kind = _JSON_TYPE_OF.get(type(value))
    for alt in alts:
        t = _deref_schema(alt, defs).get("type") if isinstance(_deref_schema(alt, defs), dict) else None
        ts = t if isinstance(t, list) else [t]
        if kind in ts or (kind == "integer" and "number" in ts):
            return alt
    return alts[0] if alts else None


def _drop_added_nulls(schema: Any, value: Any, defs: dict[str, Any], added: frozenset[int]) -> Any:
    """`value` without the nulls strict mode wrote for optional properties (found by the wrappers' ids)."""
    node = _deref_schema(schema, defs)
    if not isinstance(node, dict):
        return value
    if "anyOf" in node:
        if id(node) in added and value is not None:
            return _drop_added_nulls(node["anyOf"][0], value, defs, added)
        return _drop_added_nulls(_branch_for(node["anyOf"], value, defs), value, defs, added)
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {k: _drop_added_nulls(props.get(k), v, defs, added) for k, v in value.items()
                if not (v is None and id(props.get(k)) in added)}
    if isinstance(value, list):
        prefix = node.get("prefixItems", [])
        return [_drop_added_nulls(prefix[i] if i < len(prefix) else node.get("items"), v, defs, added)
                for i, v in enumerate(value)]
    return value


# -- the public function ---------------------------------------------------------------------------


def _count_properties(value: Any) -> Iterator[tuple[str, int]]:
    stack: list[tuple[Any, str]] = [(value, "$")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                yield path, len(props)
            for k, v in node.items():
                if k in ("enum", "const", "examples", "default"):
                    continue
                if isinstance(v, (dict, list)):
                    stack.append((v, _join(path, str(k))))
        elif isinstance(node, list):
            stack.extend((v, _join(path, i)) for i, v in enumerate(node) if isinstance(v, (dict, list)))


def _data_depth_check(schema: Any, limit: int) -> None:
    """Refuse schemas whose own nesting of properties/items (not counting `$ref`s) passes `limit`."""
    stack: list[tuple[Any, str, int]] = [(schema, "$", 0)]
    while stack:
        node, path, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        if depth > limit:
            raise SchemaRefused(path, f"nesting deeper than {limit}", "flatten the schema or move parts into $defs")
        for k, v in node.items():
            kp = _join(path, k)
            if k in ("properties", "patternProperties") and isinstance(v, dict):
                stack.extend((sub, _join(kp, name), depth + 1) for name, sub in v.items())
            elif k in ("$defs", "definitions") and isinstance(v, dict):
                stack.extend((sub, _join(kp, name), 0) for name, sub in v.items())
            elif k in ("items", "additionalProperties", "additionalItems", "prefixItems") and isinstance(v, list):
                stack.extend((sub, _join(kp, i), depth + 1) for i, sub in enumerate(v))
            elif k in ("items", "additionalProperties", "additionalItems", "contains", "propertyNames"):
                stack.append((v, kp, depth + 1))
            elif k in ("anyOf", "oneOf", "allOf") and isinstance(v, list):
                stack.extend((sub, _join(kp, i), depth) for i, sub in enumerate(v))
            elif k in ("not", "if", "then", "else"):
                stack.append((v, kp, depth))


def prepare_schema(raw: Any, *, strict: bool = False, close_declared: bool = True,
                   limits: Limits = DEFAULT_LIMITS) -> PreparedSchema:
    """Prepare the user's schema `raw` (already parsed JSON) for a grammar backend.

    `close_declared` (the default) closes, in the grammar only, each object that declares its
    properties and leaves `additionalProperties` out (`_close_declared`): a narrowing for decoding,
    like the bounds after a cut; False keeps the contract's grammar, extra keys and all.

    Returns the grammar schema, whether the root was wrapped, and the report of enforced,
    validated and ignored keywords. Raises `SchemaRefused` (path, reason, hint) when no JSON
    value satisfies the schema or when it breaks one of `limits`.
    """
    original: Any = raw
    if isinstance(raw, bool):
        if raw is False:
            raise SchemaRefused("$", "the schema `false` matches nothing", "use {} for any value")
        raw = {}
    if not isinstance(raw, dict):
        raise SchemaRefused("$", f"a schema must be a JSON object, got {type(raw).__name__}",
                            'write the schema as an object, e.g. {"type": "string"}')
    _json_depth_check(raw, limits.max_json_depth)
    try:
        size = len(json.dumps(raw, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as exc:  # keys that are not strings, NaN, circular values
        raise SchemaRefused("$", f"not a JSON value: {exc}", "pass parsed JSON") from exc
    if size > limits.max_bytes:
        raise SchemaRefused("$", f"schema is {size} bytes, more than the limit of {limits.max_bytes}",
                            "split the schema or remove unused definitions")
    total = 0
    for path, n in _count_properties(raw):
        total += n
        if n > limits.max_properties:
            raise SchemaRefused(path, f"more than {limits.max_properties} properties in the schema (in one object)",
                                "extract fewer fields per object")
        if total > limits.max_total_properties:
            raise SchemaRefused(path, f"more than {limits.max_total_properties} properties in the schema in all",
                                "split the schema or remove unused definitions")
    _data_depth_check(raw, limits.max_depth)

    if isinstance(original, dict):
        original = copy.deepcopy(raw)
    raw = copy.deepcopy(raw)
    prepared: Node | None = None
    preparer: _Preparer | None = None
    for recursion in range(limits.max_recursion, 0, -1):
        preparer = _Preparer(raw, limits, recursion)
        try:
            prepared = preparer.node(raw, "$", 0, preparer.root_base, ())
        except _TooBig:
            if recursion <= 1:
                return _skeleton_only(raw, original, f"the schema has more than {_NODE_BUDGET} nodes with its "
                                      "$refs inlined")
            continue
        if isinstance(prepared, _Never):
            break
        text = json.dumps(_to_validation_schema(prepared), separators=(",", ":"))
        if len(text) <= limits.max_prepared_bytes:
            break
        if recursion <= 1 or not preparer.cut_recursion:  # (no recursion cut: a lower depth is the same schema)
            return _skeleton_only(raw, original, f"the schema is {len(text)} bytes with its $refs inlined, more "
                                  f"than the limit of {limits.max_prepared_bytes}")
    assert preparer is not None and prepared is not None
    if isinstance(prepared, _Never):
        raise SchemaRefused(prepared.path, f"no JSON value satisfies the schema: {prepared.reason}",
                            "remove the contradiction")
    prepared = preparer.deref(prepared, "$")
    assert isinstance(prepared, dict)
    schema: dict[str, Any] = _to_validation_schema(prepared)
    defs: dict[str, Any] = {name: _to_validation_schema(d) for name, d in preparer.defs_out.items()}
    if preparer.uses_any:
        defs.update(_any_defs(limits.max_any_depth))
    notes = list(preparer.notes)
    closed = _close_declared(schema, close_declared) + sum(_close_declared(d, close_declared) for d in defs.values())
    if closed:
        notes.append(f"{closed} object(s) with declared properties and no additionalProperties schema: the grammar "
                     "writes only their declared properties (a small model left free adds keys until max_tokens)")
    if preparer.cut_recursion:
        notes.append(f"recursive $refs unrolled to depth {preparer.max_recursion}; deeper values are not generated")
    wrapped = not _is_object_root(schema)
    if wrapped:
        desc = schema.get("description")
        inner = schema
        schema = {"type": "object", "properties": {"value": inner}, "required": ["value"],
                  "additionalProperties": False}
        if isinstance(desc, str):
            schema["description"] = desc
        notes.append("the root is not an object: the grammar writes {\"value\": ...}, unwrapped afterwards")
    added: set[int] = set()
    if strict:
        defs = {name: _strict(d, defs, added) for name, d in defs.items()}
        schema = _strict(schema, defs, added)
    if isinstance(raw.get("description"), str):
        schema.setdefault("description", raw["description"])
    if defs:
        schema["$defs"] = defs
    report = SchemaReport(enforced=preparer.enforced, validated=preparer.validated, ignored=preparer.ignored,
                          notes=notes)
    return PreparedSchema(schema=schema, wrapped=wrapped, strict=strict, report=report, original=original,
                          _added_nulls=frozenset(added))


def _skeleton_only(raw: dict[str, Any], original: Any, reason: str,
                   limits: Limits = DEFAULT_LIMITS) -> PreparedSchema:
    """A schema too large for a full grammar once its `$ref`s are inlined (the shared definitions
    of a real-world schema reached from many places: 2.8 to 21 MB for the Washington Post's and
    SARIF's): its skeleton as the grammar (`loose_schema`, read through the refs, bounded), every
    answer validated against the schema itself, whose validators follow the refs without inlining."""
    wrapped = not (_is_object_root(raw) or ("type" not in raw and isinstance(raw.get("properties"), dict)))
    body = _skeleton(raw, raw, SKELETON_DEPTH, _bounded_any(min(limits.max_any_depth, 2)), [SKELETON_NODES],
                     ())  # (the raw schema's patterns are not checked here: no leaves)
    if wrapped:
        schema = {"type": "object", "properties": {"value": body}, "required": ["value"], "additionalProperties": False}
    elif _is_object_root(body):
        schema = body
    else:
        schema = {"type": "object", "additionalProperties": _bounded_any(min(limits.max_any_depth, 2))}
    if isinstance(raw.get("description"), str):
        schema.setdefault("description", raw["description"])
    report = SchemaReport(enforced={}, validated={"*": ["$"]}, ignored={},
                          notes=[f"validate-only grammar: {reason}; the grammar holds the schema's skeleton (top "
                                 f"{SKELETON_DEPTH} levels), the rest is validated after decoding"])
    return PreparedSchema(schema=schema, wrapped=wrapped, strict=False, report=report, original=original,
                          skeleton_only=True)


#: the validate-only grammar's skeleton: levels of objects kept, and schema nodes at most
SKELETON_DEPTH: Final = 3
SKELETON_NODES: Final = 400
#: a choice (`anyOf`, `oneOf`) of more shapes than this is left free in the skeleton
SKELETON_CHOICES: Final = 8
_SCALARS: Final = frozenset({"string", "number", "integer", "boolean", "null"})
#: what a scalar keeps in a skeleton with `leaves` (`loose_schema`): the grammar schema's patterns
#: are the ones it enforces; on the H200 12 real-world schemas whose grammar timed out failed three
#: times on the one pattern their skeleton had dropped. Not lengths: the xgrammar of vLLM 0.26
#: (0.2.7) compiles a string's `maxLength` slowly (Snowplow's 440-byte schema of four strings of at
#: most 150 characters: 2.8 s, 0.01 s without them), and a skeleton that kept them was as slow as
#: the grammar it stands in for
SKELETON_SCALAR_KEYWORDS: Final = ("pattern", "format")


def loose_schema(prepared: PreparedSchema, limits: Limits = DEFAULT_LIMITS, *, leaves: bool = False) -> dict[str, Any]:
    """The validate-only grammar for `prepared`: the schema's skeleton, any bounded JSON value
    below it (or `{"value": ...}` for a wrapped root). Used when no backend compiles the full
    grammar schema within its time budget; the answer is then checked against the user's schema
    only after decoding, and retried with the errors fed back.

    The skeleton (`_skeleton`) keeps what costs a grammar little and what a small model left free
    got wrong on the real-world schemas (on the H200 most validate-only answers missed a required
    property or wrote one the schema closes out): the top objects' properties, `required` and
    `additionalProperties` closed (where the properties hold what the object requires), the
    types of scalars and small enums, arrays' items, the shapes of a choice (`anyOf`/`oneOf`,
    where the node has no shape of its own), to `SKELETON_DEPTH` levels and `SKELETON_NODES`
    nodes; `$ref` cycles and the other combinators are left to validation. With `leaves`, each
    string also keeps its own pattern and format (`SKELETON_SCALAR_KEYWORDS`): for a grammar
    that took too long to compile (its size, not its leaves: on the real-world schemas they add
    nothing measurable to a skeleton's compile), not for one the backend refused (a pattern may
    be why)."""
    any_json = _bounded_any(min(limits.max_any_depth, 2))
    budget = [SKELETON_NODES]
    body = _skeleton(prepared.schema, prepared.schema, SKELETON_DEPTH, any_json, budget,
                     SKELETON_SCALAR_KEYWORDS if leaves else ())
    if prepared.wrapped:
        value = body.get("properties", {}).get("value", any_json) if isinstance(body, dict) else any_json
        return {"type": "object", "properties": {"value": value}, "required": ["value"],
                "additionalProperties": False}
    if not _is_object_root(body):
        return {"type": "object", "additionalProperties": any_json}
    return body


def _skeleton(node: Any, root: Mapping[str, Any], depth: int, any_json: dict[str, Any],
              budget: list[int], leaves: tuple[str, ...]) -> dict[str, Any]:
    """`node` cut down to its shape (see `loose_schema`); `any_json` wherever the shape is not
    plain or the depth or node budget is spent."""
    budget[0] -= 1
    if budget[0] < 0 or not isinstance(node, Mapping) or str(node.get("$ref", "")).startswith(_ANY_PREFIX):
        return any_json  # (the prepared schema's own any-JSON definitions: not walked, their size doubles)
    if node == any_json:
        return any_json  # (a skeleton's own: not walked, so a skeleton's skeleton is itself)
    node = resolve_ref(node, root)
    alts = node.get("anyOf") or node.get("oneOf")
    own_shape = bool(type_names(node)) or isinstance(node.get("properties"), Mapping)
    if isinstance(alts, list) and not own_shape:
        # the choices' shapes (X or null: X's, nullable); a node with a shape of its own keeps it, its
        # choices (often `required` alone: the Washington Post's "streams or source_url") validated
        kinds = [resolve_ref(a, root) if isinstance(a, Mapping) else a for a in alts]
        rest = [a for a in kinds if not (isinstance(a, Mapping) and a.get("type") == "null" and len(a) == 1)]
        if not rest or len(rest) > SKELETON_CHOICES:
            return any_json
        shapes = [_skeleton(a, root, depth, any_json, budget, leaves) for a in rest]
        if any(shape is any_json for shape in shapes):
            return any_json
        if len(rest) < len(kinds):
            shapes.append({"type": "null"})
        return shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
    if "const" in node and _scalar(node["const"]):
        return {"const": node["const"]}
    enum = node.get("enum")
    if isinstance(enum, list) and enum and len(enum) <= 64 and all(_scalar(v) for v in enum):
        return {"enum": list(enum)}
    names = list(type_names(node))
    if not names and isinstance(node.get("properties"), Mapping):
        names = ["object"]
    if names and all(t in _SCALARS for t in names):
        scalar: dict[str, Any] = {"type": names[0] if len(names) == 1 else names}
        scalar.update((k, node[k]) for k in leaves if k in node)
        return scalar
    if names == ["array"] and depth > 0:
        items = node.get("items")
        return {"type": "array", "items": _skeleton(items, root, depth - 1, any_json, budget, leaves)
                if isinstance(items, Mapping) else any_json}
    props = node.get("properties")
    if names == ["object"] and depth > 0 and isinstance(props, Mapping) and len(props) <= 256:
        out: dict[str, Any] = {"type": "object", "properties": {
            str(k): _skeleton(v, root, depth - 1, any_json, budget, leaves) for k, v in props.items()}}
        named = [r for r in node.get("required", []) if isinstance(r, str)]
        required = [r for r in named if r in props]
        if required:
            out["required"] = required
        # closed wherever its properties hold all the object requires: a skeleton may refuse what the
        # schema allows (never the other way round), and an open object costs xgrammar about 4 ms per
        # property to compile, a closed one 0.1 ms (the skeleton of WashingtonPost wp_4, 790
        # properties: 3.8 s open, 0.16 s closed; timed out in the compile guard on the H200, its
        # `version` const was lost)
        closed = len(required) == len(named) and node.get("minProperties", 0) <= len(props)
        out["additionalProperties"] = False if closed and props else any_json
        return out
    return any_json


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_object_root(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "object":
        return True
    alts = schema.get("anyOf")
    return isinstance(alts, list) and bool(alts) and all(
        isinstance(b, dict) and b.get("type") == "object" for b in alts)
