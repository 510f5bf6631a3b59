"""Property-based fuzzing of what reads untrusted input: the schema compiler (any JSON value is
compiled or refused with `SchemaRejected`, never another exception), the output parser (any model
text is `Valid` or `Invalid`, never an exception), the document checks and the prompt-echo check.
The API itself is fuzzed by schemathesis in tests/test_service_fuzz.py."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
import xgrammar as xgr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extractor import DocumentError, SchemaRejected, compile_strict_schema, task_from_json_schema, task_from_model
from extractor.contracts.compile import SUPPORTED
from extractor.pipeline.documents import check_text, decode_document
from extractor.pipeline.injection import echo_errors
from extractor.pipeline.prompt import build_messages, system_prompt
from extractor.pipeline.validate import Invalid, Valid, validate_output
from schemas import BUILTIN

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=25)

KEYWORDS = sorted(SUPPORTED | {"not", "if", "then", "patternProperties", "unevaluatedProperties", "$dynamicRef"})
TYPES = ["object", "array", "string", "number", "integer", "boolean", "null", "stsring", 7, None, ["string", "null"]]
PATTERNS = ["^[a-z]+$", "(a+)+b", "a\x00", "(", "\\d{4}-\\d{2}", "[a-z]{1,99999}", "(?=x)", "\\1", "a{2,1}"]


def keyword_value(key: str) -> st.SearchStrategy[Any]:
    special: dict[str, st.SearchStrategy[Any]] = {
        "type": st.sampled_from(TYPES),
        "pattern": st.sampled_from(PATTERNS) | st.text(max_size=20),
        "format": st.sampled_from(["date", "email", "credit-card", 3]),
        "$ref": st.sampled_from(["#/$defs/A", "#/$defs/Missing", "https://x/y", "#/definitions/A", 1]),
        "required": st.lists(st.text(max_size=3) | st.integers(), max_size=3),
        "enum": st.lists(scalars, max_size=5) | st.just([]),
    }
    return special.get(key, json_values)


GOOD_LEAVES: list[dict[str, Any]] = [
    {"type": "string"}, {"type": "integer"}, {"type": "number", "minimum": 0}, {"type": "boolean"},
    {"type": ["string", "null"]}, {"enum": ["a", "b", 3, None]}, {"const": "x"},
    {"type": "string", "format": "date"}, {"type": "string", "pattern": "^[A-Z]{2}[0-9]{1,4}$", "maxLength": 12},
    {"type": "array", "items": {"type": "string"}, "maxItems": 5}, {"$ref": "#/$defs/A"},
]


@st.composite
def schema_like(draw: st.DrawFn, depth: int = 0) -> Any:
    """Objects of properties that are mostly valid sub-schemas, some spoilt by one more keyword
    (supported or not) with a plausible or hostile value, a few any JSON at all."""
    kind = "object" if depth == 0 else draw(st.sampled_from(
        ["leaf", "leaf", "leaf", "leaf", "object", "object", "spoilt leaf", "spoilt object", "any JSON"]))
    if kind == "any JSON":
        return draw(json_values)
    if kind.endswith("leaf") or depth >= 3:
        leaf = dict(draw(st.sampled_from(GOOD_LEAVES)))
        if kind.startswith("spoilt"):
            key = draw(st.sampled_from(KEYWORDS))
            leaf[key] = draw(keyword_value(key))
        return leaf
    props = draw(st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=4), schema_like(depth + 1),
                                 min_size=1, max_size=4))
    schema: dict[str, Any] = {"type": "object", "properties": props,
                              "required": draw(st.lists(st.sampled_from(sorted(props)), unique=True))}
    if depth == 0:
        schema["$defs"] = {"A": draw(schema_like(depth + 1))}
        schema["description"] = draw(st.text(max_size=30))
        if draw(st.integers(0, 4)) == 4:
            kind = "spoilt object"
    if kind == "spoilt object":
        key = draw(st.sampled_from(KEYWORDS))
        schema[key] = draw(keyword_value(key))
    return schema


def compiled_or_refused(schema: Any) -> dict[str, Any] | None:
    try:
        return compile_strict_schema(schema)
    except SchemaRejected as exc:
        assert exc.path.startswith("$") and exc.reason
        return None


@FUZZ
@given(json_values)
@example({"type": "object", "properties": {"a": {"type": "string"}}, "required": [{"x": 1}]})
@example({"type": "object", "properties": {"a": {"type": [{"x": 1}]}}})
@example({"type": "object", "properties": {"a": {"type": "string", "format": {"x": 1}}}})
@example({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}, "maxItems": "x"}}})
def test_any_json_value_compiles_or_is_refused(value: Any) -> None:
    compiled_or_refused(value)


@FUZZ
@given(schema_like())
def test_schema_like_values_compile_or_are_refused_and_what_compiles_is_usable(schema: Any) -> None:
    try:
        task = task_from_json_schema(schema, name="fuzz")
    except SchemaRejected as exc:
        assert exc.path.startswith("$") and exc.reason
        return
    # what the compiler accepts, the rest of the library handles: the grammar, prompts, budgets, validation
    xgr.Grammar.from_json_schema(task.schema_json, any_whitespace=False, strict_mode=True)
    assert 64 <= task.max_tokens <= 2048
    assert build_messages(task, "a document")[-1]["role"] == "user"
    assert isinstance(validate_output(task, "{}", "a document"), Valid | Invalid)
    assert isinstance(validate_output(task, json.dumps(schema), "a document"), Valid | Invalid)


def test_python_values_that_are_not_json_are_refused() -> None:
    loop: dict[str, Any] = {"type": "object"}
    loop["properties"] = {"self": loop}
    deep: Any = {"type": "string"}
    for _ in range(100_000):
        deep = {"items": deep}
    for value in (loop, deep, {"type": "object", "properties": {"a": {"type": "string", "default": {1, 2}}}},
                  {"type": "object", "properties": {1: {"type": "string"}}}):
        compiled_or_refused(value)


TASKS = [task_from_model(m) for m in BUILTIN]
GOOD = {"person": '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'}


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """A valid output with characters deleted, replaced or inserted (near misses the parser must judge)."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(0, len(chars) - 1)))
        op = draw(st.sampled_from(["delete", "replace", "insert"]))
        c = draw(st.characters())
        if op == "delete" and chars:
            del chars[i]
        elif op == "replace" and chars:
            chars[i] = c
        else:
            chars.insert(i, c)
    return "".join(chars)


model_outputs = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("utf-8", errors="surrogateescape")),
    json_values.map(json.dumps),
    mutated(GOOD["person"]),
    st.integers(1, 6000).map(lambda n: '{"age": ' + "9" * n + "}"),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
)


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
@FUZZ
@given(text=model_outputs, document=st.text(max_size=200))
@example(text='{"age": ' + "9" * 5000 + "}", document="x")
@example(text="[" * 100_000, document="x")
@example(text='{"name": NaN, "age": Infinity}', document="x")
def test_any_model_output_is_valid_or_invalid_never_an_exception(task: Any, text: str, document: str) -> None:
    outcome = validate_output(task, text, document)
    assert isinstance(outcome, Valid | Invalid)
    if isinstance(outcome, Invalid):
        assert outcome.errors and all(isinstance(e, str) for e in outcome.errors)
    assert isinstance(echo_errors(text, system_prompt(task), document), list)


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xff\xfe\x00")
@example(b"\xed\xa0\x80")
def test_any_bytes_are_a_document_or_a_document_error(raw: bytes) -> None:
    try:
        text = decode_document(raw, "doc")
    except DocumentError:
        return
    assert text.strip() and "\x00" not in text
    assert check_text(text) == text


INVOICE_LIKE = json_values | st.fixed_dictionaries({
    "vendor": scalars, "invoice_number": scalars, "currency": st.sampled_from(["EUR", "USD", "eur", None]),
    "date": st.sampled_from(["2024-03-01", "2024-13-01", "01/03/2024", "2024-02-30", None]),
    "line_items": st.lists(st.fixed_dictionaries({"description": scalars, "quantity": scalars,
                                                  "unit_price": scalars}), max_size=2),
    "total": scalars})


@FUZZ
@given(task=st.sampled_from(TASKS), value=INVOICE_LIKE)
def test_the_fast_schema_check_never_passes_what_jsonschema_refuses(task: Any, value: Any) -> None:
    """The schema gate asks jsonschema_rs first; whatever it passes, the Python validator (whose
    verdict stands) passes too, formats included, so the fast path never lets an output through."""
    from extractor.pipeline.validate import _fast_validator, _validator, schema_errors

    fast = _fast_validator(task.schema_json)
    assert fast is not None
    python_ok = not any(True for _ in _validator(task.schema_json).iter_errors(value))
    if fast.is_valid(value):
        assert python_ok
    assert (schema_errors(task.schema_json, value) == []) == python_ok
