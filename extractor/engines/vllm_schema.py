"""The JSON schema as the vLLM engines send it: a form vLLM hands to xgrammar.

vLLM's default structured-output backend, "auto", picks a grammar backend per request, in the
thread that adds the request to the engine: xgrammar, unless the schema has a keyword vLLM
believes xgrammar lacks (its `has_xgrammar_unsupported_json_features`: `multipleOf` on a number,
`uniqueItems`/`contains`/`minContains`/`maxContains` on an array, a string `format` outside its
list, `patternProperties`/`propertyNames` on an object). Then it takes llguidance, or, where the
schema has `patternProperties` anywhere, outlines, which writes the whole schema as one regular
expression and parses it in Python, in that same thread. On the H200, 21 of the 86 heaviest
real-world schemas went to outlines: every request in the engine waited while it parsed, and none
of the 86 completed in 330 s. A server started with `--structured-outputs-config.backend xgrammar`
refuses the same schemas outright (400).

The compile guard checks each schema with xgrammar, so vLLM gets it in the form xgrammar takes
(`for_vllm_uncached`): each `pattern` with its optional groups counted (`(...)?` as `(...){0,1}`:
xgrammar misreads the former where the group ends in a repetition, `xgrammar_regex.py`),
`patternProperties` folded into `additionalProperties` (which xgrammar also
enforces correctly: it refuses some valid values under `patternProperties`), and the other
keywords dropped. The pipeline validates every output against the schema afterwards, so what
the grammar no longer says is still checked, as on any engine whose grammar cannot say it.
Data is never changed: vLLM's test also looks inside `enum` and `const` values, so an object
value shaped like a flagged schema still sends its schema to another backend (no real-world
schema of the development set has one). The rule is vLLM 0.26's; other versions may flag more.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from extractor.contracts.schema_walk import fold_pattern_properties
from extractor.engines.base import GenerationRequest
from extractor.engines.compile_guard import CompileGuard
from extractor.engines.xgrammar_regex import counted_optional_groups

#: the string formats vLLM lets xgrammar have (vLLM 0.26 `STRING_SUPPORTED_FORMATS`)
XGRAMMAR_FORMATS: Final = frozenset({
    "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri",
    "uri-reference", "uri-template", "json-pointer", "relative-json-pointer",
})
#: keywords on an array that send a schema away from xgrammar
_ARRAY_KEYWORDS: Final = ("uniqueItems", "contains", "minContains", "maxContains")
#: keys whose values are data, not schemas: never changed
_DATA_KEYS: Final = ("enum", "const", "default", "examples")
#: keywords whose value maps names to schemas
_SCHEMA_MAPS: Final = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
#: schemas kept (by identity: a task's schema is one object for all its documents)
_CACHE_SIZE: Final = 256


def _pattern_needs_change(node: Mapping[str, Any]) -> bool:
    pattern = node.get("pattern")
    return isinstance(pattern, str) and counted_optional_groups(pattern) != pattern


def _needs_change(node: Mapping[str, Any]) -> bool:
    """Whether vLLM would send this node away from xgrammar (its own test, node by node), or
    xgrammar would misread its pattern (`xgrammar_regex.counted_optional_groups`)."""
    if _pattern_needs_change(node):
        return True
    kind = node.get("type")
    if kind in ("integer", "number") and "multipleOf" in node:
        return True
    if kind == "array" and any(k in node for k in _ARRAY_KEYWORDS):
        return True
    if kind == "string" and "format" in node and node["format"] not in XGRAMMAR_FORMATS:
        return True
    return kind == "object" and ("patternProperties" in node or "propertyNames" in node)


def _nodes(schema: Any) -> list[dict[str, Any]]:
    """Every dict of `schema` except data: the values of `enum`, `const`, `default` and `examples`
    in a schema (a property or definition of those names is a schema like any other)."""
    out: list[dict[str, Any]] = []
    stack: list[tuple[Any, bool]] = [(schema, False)]
    while stack:
        item, is_map = stack.pop()
        if isinstance(item, dict):
            out.append(item)
            for key, value in item.items():
                if is_map or key not in _DATA_KEYS:
                    stack.append((value, not is_map and key in _SCHEMA_MAPS))
        elif isinstance(item, list):
            stack.extend((v, False) for v in item)
    return out


def _rewrite(node: dict[str, Any]) -> None:
    if _pattern_needs_change(node):
        node["pattern"] = counted_optional_groups(node["pattern"])
    kind = node.get("type")
    if kind in ("integer", "number"):
        node.pop("multipleOf", None)
    elif kind == "array":
        for key in _ARRAY_KEYWORDS:
            node.pop(key, None)
    elif kind == "string" and node.get("format") not in XGRAMMAR_FORMATS:
        node.pop("format", None)
    elif kind == "object":
        fold_pattern_properties(node)
        node.pop("propertyNames", None)


def for_vllm_uncached(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """`schema` in the form vLLM hands to xgrammar (see the module docstring): the same object
    where nothing needs changing, else a changed copy."""
    if not any(_needs_change(node) for node in _nodes(schema)):
        return schema
    copy: dict[str, Any] = json.loads(json.dumps(schema))
    for node in _nodes(copy):
        if _needs_change(node):
            _rewrite(node)
    return copy


class VllmSchemas:
    """`for_vllm_uncached`, kept for the last `_CACHE_SIZE` schema objects (a task's documents
    share one schema object; grounded decoding makes one per document)."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._kept: OrderedDict[int, tuple[Mapping[str, Any], Mapping[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        key = id(schema)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and kept[0] is schema:
                self._kept.move_to_end(key)
                return kept[1]
        adapted = for_vllm_uncached(schema)
        with self._lock:
            self._kept[key] = (schema, adapted)  # the schema is held: its id is not reused meanwhile
            self._kept[id(adapted)] = (adapted, adapted)  # vLLM's form is its own form
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return adapted


class GuardedSchemas:
    """What both vLLM engines do with a schema before vLLM sees it: put it in vLLM's form
    (`for_vllm_uncached`, kept by `VllmSchemas`), then check that form in the compile guard
    (`compile_guard.py`) or admit it unchecked (`Engine.admit`). `guard` None: no checks."""

    def __init__(self, guard: CompileGuard | None) -> None:
        self.guard = guard
        self.form = VllmSchemas()

    async def ready(self) -> None:
        if self.guard is not None:
            await self.guard.ready()

    def admit(self, schema: Mapping[str, Any]) -> bool:
        """A schema derived from one the guard passed goes to vLLM unchecked (`Engine.admit`);
        vLLM compiles it in its own grammar threads, not holding up other requests."""
        if self.guard is not None:
            self.guard.admit(self.form(schema))
        return True

    async def check(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """`schema` in vLLM's form, once it compiles within the guard's limit (`GrammarTimeout`,
        `SchemaRejected` where it does not)."""
        form = self.form(schema)
        if self.guard is not None:
            await self.guard.check(form)
        return form

    async def requests(self, requests: Sequence[GenerationRequest]) -> list[GenerationRequest]:
        """The requests with their schemas in vLLM's form, each distinct schema checked once: a
        schema past the compile limit never reaches vLLM."""
        forms: dict[int, Mapping[str, Any]] = {}
        for r in requests:
            if id(r.schema) not in forms:
                forms[id(r.schema)] = await self.check(r.schema)
        return [r if forms[id(r.schema)] is r.schema else replace(r, schema=forms[id(r.schema)]) for r in requests]
