"""Hostile schemas: refused where they come in (the compiler, a schema file, the registry, the
CLI's `schemas check` and `run`, the service's schema modules) with the JSON path and the reason,
before any engine sees a request; a slow grammar compile is killed; compiled grammars are
cached within a bound of entries and bytes."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from extractor import (
    Extractor,
    SchemaRegistry,
    SchemaRejected,
    ScriptedEngine,
    compile_strict_schema,
    task_from_json_schema,
    task_from_model,
)
from extractor.cli.main import main
from extractor.engines.grammar_cache import GrammarCache
from extractor.engines.grammar_check import GrammarChecker
from schemas import Person

ROOT = Path(__file__).resolve().parent.parent
DOC = "Alice Smith is 34 years old and lives in Lisbon."


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = obj(x=schema)
    return schema


def json_nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


#: (case, schema, JSON path of the refusal, words of its reason)
HOSTILE: list[tuple[str, Any, str, str]] = [
    ("malformed type", obj(name={"type": "stsring"}), "$.properties.name.type", "unknown type 'stsring'"),
    ("type not a string", obj(name={"type": {"oops": 1}}), "$.properties.name.type", "unknown type"),
    ("not a JSON object", [1, 2, 3], "$", "must be a JSON object"),
    ("a bare string", "person", "$", "must be a JSON object"),
    ("unsupported keyword not", obj(a={"not": {"type": "string"}}), "$.properties.a.not", "unsupported keyword"),
    ("unsupported keyword if", obj(a={"type": "string", "if": {}, "then": {}}), "$.properties.a.if",
     "unsupported keyword"),
    ("patternProperties", {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
     "$.patternProperties", "unsupported keyword"),
    ("nesting deeper than the limit", nested(20), "$" + ".properties.x" * 13, "nesting deeper than 12"),
    ("more properties than the limit", {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(300)}},
     "$", "more than 256 properties"),
    ("an enum of 50,000 values", obj(a={"enum": list(range(50_000))}), "$.properties.a.enum",
     "50000 values, more than the limit of 1024"),
    # within the count limit, but 1 MB of values: xgrammar compiled this one for 21 s into 205 MB
    ("an enum of long values", obj(a={"enum": ["x" * 1000 + str(i) for i in range(1000)]}), "$.properties.a.enum",
     "more than the limit of 65536"),
    ("a catastrophic pattern", obj(a={"type": "string", "pattern": "(a+)+b"}), "$.properties.a.pattern",
     "nested quantifier"),
    ("a NUL in a pattern", obj(a={"type": "string", "pattern": "ab\x00c"}), "$.properties.a.pattern", "NUL"),
    ("an invalid pattern", obj(a={"type": "string", "pattern": "([a-z"}), "$.properties.a.pattern",
     "invalid regular expression"),
    ("a backreference", obj(a={"type": "string", "pattern": "(a)\\1"}), "$.properties.a.pattern", "backreferences"),
    # 250 patterns of {1,50}{1,50}: 17.7 s and 80 MB of grammar before this limit
    ("repetitions past the budget",
     {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": "^[a-z]{1,50}[0-9]{1,50}$"}
                                       for i in range(250)}},
     "$.properties.p20.pattern", "repeat more than 2000 times"),
    ("a keyword of the wrong type", obj(a={"type": "string", "minLength": "three"}), "$.properties.a.minLength",
     "invalid value"),
    ("a description that is no string", obj(a={"type": "string", "description": {"x": 1}}),
     "$.properties.a.description", "invalid value"),
    ("required names that are no strings", {**obj(a={"type": "string"}), "required": [{"a": 1}]}, "$.required",
     "is required but not a property"),
    ("JSON nested 900 deep", {**obj(a={"type": "string"}), "examples": json_nest(900)}, "$.examples" + "[0]" * 63,
     "JSON nested deeper than 64"),
    ("a recursive $ref", {"$defs": {"N": obj(kids={"type": "array", "items": {"$ref": "#/$defs/N"}})},
                          **obj(root={"$ref": "#/$defs/N"})}, "$.$defs.N.properties.kids", "recursive $ref"),
    ("a keyword beside a $ref", {"$defs": {"A": obj(x={"type": "string"})},
                                 **obj(a={"$ref": "#/$defs/A", "properties": None})}, "$.properties.a.properties",
     "beside a $ref"),
    ("an external $ref", obj(a={"$ref": "https://evil.example/schema.json"}), "$.properties.a.$ref", "only local refs"),
    ("an open object", {**obj(a={"type": "string"}), "additionalProperties": True}, "$.additionalProperties", "closed"),
]
IDS = [case for case, *_ in HOSTILE]
#: cases the strict compiler refuses but a raw-schema task now takes (issue 12): annotations and
#: keywords a grammar cannot express are validated after decoding, never a reason to refuse
ACCEPTED_RAW = frozenset({"unsupported keyword not", "unsupported keyword if", "patternProperties", "a backreference",
                          "a recursive $ref", "a keyword beside a $ref", "an open object",
                          "repetitions past the budget"})
RAW_REFUSED = [h for h in HOSTILE if h[0] not in ACCEPTED_RAW]
RAW_IDS = [case for case, *_ in RAW_REFUSED]
RAW_ACCEPTED = [h for h in HOSTILE if h[0] in ACCEPTED_RAW]


def write_schema(tmp_path: Path, schema: Any, name: str = "hostile.schema.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return path


@pytest.mark.parametrize(("case", "schema", "path", "reason"), HOSTILE, ids=IDS)
def test_the_compiler_refuses_with_the_path_and_the_reason(case: str, schema: Any, path: str, reason: str) -> None:
    with pytest.raises(SchemaRejected) as info:
        compile_strict_schema(schema)
    assert info.value.path.startswith(path), info.value
    assert reason in info.value.reason, info.value
    assert str(info.value) == f"{info.value.path}: {info.value.reason}"


@pytest.mark.parametrize(("case", "schema", "path", "reason"), RAW_REFUSED, ids=RAW_IDS)
def test_a_hostile_schema_file_never_reaches_the_engine(tmp_path: Path, case: str, schema: Any, path: str,
                                                        reason: str) -> None:
    file = write_schema(tmp_path, schema)
    engine = ScriptedEngine(lambda request: pytest.fail("the engine was called"))
    with pytest.raises(SchemaRejected) as info:
        Extractor(engine).run(str(file), DOC)
    assert info.value.path.startswith(path) and reason in info.value.reason
    assert engine.requests == []


@pytest.mark.parametrize(("case", "schema", "path", "reason"), RAW_REFUSED, ids=RAW_IDS)
def test_schemas_check_prints_one_refusal_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str,
                                               schema: Any, path: str, reason: str) -> None:
    file = write_schema(tmp_path, schema)
    assert main(["schemas", "check", str(file)]) == 1
    out, err = capsys.readouterr()
    line = json.loads(out)
    assert (line["file"], line["ok"]) == (str(file), False)
    assert line["reason"].startswith(path) and reason in line["reason"]
    assert err == ""


@pytest.mark.parametrize(("case", "schema", "path", "reason"), RAW_REFUSED[:10], ids=RAW_IDS[:10])
def test_extract_run_with_a_hostile_schema_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   case: str, schema: Any, path: str, reason: str) -> None:
    file = write_schema(tmp_path, schema)
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    assert main(["run", str(file), str(doc)]) == 2  # refused before the engine is even created
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"extract: {path}") and reason in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("case", "schema", "path", "reason"), RAW_ACCEPTED, ids=[c for c, *_ in RAW_ACCEPTED])
def test_raw_schema_tasks_take_what_the_strict_compiler_refuses(case: str, schema: Any, path: str, reason: str) -> None:
    task = task_from_json_schema(schema, name="raw")
    assert task.prepared is not None and task.prepared.original == schema
    assert task.strict_schema["type"] == "object"


def test_schema_files_that_are_not_json_are_refused(tmp_path: Path) -> None:
    cases = {
        "deep.json": "[" * 100_000 + "]" * 100_000,  # past the parser's recursion limit
        "digits.json": '{"type": "object", "properties": {"a": {"type": "integer", "maximum": ' + "9" * 5000 + "}}}",
        "binary.json": b"\xff\xfe{\x00}".decode("latin-1"),
        "truncated.json": '{"type": "object", "properties": {',
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content.encode("latin-1") if name == "binary.json" else content.encode())
        with pytest.raises(SchemaRejected, match="not valid JSON") as info:
            SchemaRegistry().get(str(path))
        assert info.value.path == "$"


def test_pydantic_models_with_hostile_constraints_are_refused_when_registered() -> None:
    class Catastrophic(BaseModel):
        code: str = Field(pattern="(a+)+b")

    class Nul(BaseModel):
        code: str = Field(pattern="a\x00")

    registry = SchemaRegistry()
    with pytest.raises(SchemaRejected, match=r"\$\.properties\.code\.pattern: nested quantifier"):
        registry.register(Catastrophic)
    with pytest.raises(SchemaRejected, match="NUL"):
        registry.register(Nul)
    assert registry.names() == []
    engine = ScriptedEngine([])
    with pytest.raises(SchemaRejected):
        Extractor(engine).run(Catastrophic, DOC)
    assert engine.requests == []


HOSTILE_MODULE = textwrap.dedent('''
    from pydantic import Field
    from extractor import Contract


    class Serial(Contract):
        contract_name = "serial"
        instructions = "Extract the serial number."
        serial: str = Field(pattern="^(\\\\d+)*$", description="Serial number")
''')


def test_a_service_with_a_hostile_schema_module_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "hostile_contracts.py").write_text(HOSTILE_MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    # never listens: the registry refuses the module's schema while the app is built
    proc = subprocess.run([sys.executable, "-m", "extractor", "--schemas", "hostile_contracts", "serve", "--port", "1",
                           "--batch-db", str(tmp_path / "b.sqlite3")], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("extract:")]
    assert lines == ["extract: $.properties.serial.pattern: nested quantifier (catastrophic backtracking), e.g. (a+)+"]
    assert "Traceback" not in proc.stderr


def test_the_service_never_resolves_a_schema_path_from_the_url(tmp_path: Path) -> None:
    from tests.service_support import call, make_app

    engine = ScriptedEngine([])
    app = make_app(engine)
    file = write_schema(tmp_path, HOSTILE[0][1])
    for name in (str(file), file.name, "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd.json"):
        r = call(app, "POST", f"/extract/{name}", json={"text": DOC})
        assert r.status_code == 404, (name, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert engine.requests == []


# -- grammar compilation: in a child process, killed past its timeout ---------------------------

def test_a_slow_grammar_compile_is_killed_and_the_checker_goes_on() -> None:
    # bypassing the compiler's limits: this enum takes xgrammar tens of seconds to compile
    slow = {"type": "object", "properties": {"a": {"enum": ["x" * 1000 + str(i) for i in range(1000)]}},
            "required": ["a"], "additionalProperties": False}
    with GrammarChecker(timeout_s=2.0) as checker:
        result = checker.check(slow)
        assert not result.ok and result.reason == "grammar compilation took longer than 2s (of the compiler's CPU time)"
        assert checker._proc is None  # killed, not waited for
        checker.timeout_s = 120.0
        good = checker.check(task_from_model(Person).strict_schema)  # a fresh child takes over
        assert good.ok and good.reason is None


def test_schemas_check_runs_the_grammar_for_schemas_the_compiler_accepts(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    good = write_schema(tmp_path, {**obj(name={"type": "string"}), "required": ["name"]}, "good.schema.json")
    bad = write_schema(tmp_path, HOSTILE[0][1], "bad.schema.json")
    assert main(["schemas", "check", str(good), str(bad)]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["file"], line["ok"]) for line in lines] == [(str(good), True), (str(bad), False)]
    assert lines[0]["compile_ms"] > 0 and lines[0]["reason"] is None


# -- the compiled-grammar cache -------------------------------------------------------------------

class Blob:
    def __init__(self, key: str, size: int) -> None:
        self.key, self.size = key, size


def sized_cache(sizes: dict[str, int], **bounds: int) -> tuple[GrammarCache[Blob], list[str]]:
    compiled: list[str] = []

    def compile(key: str) -> Blob:
        compiled.append(key)
        return Blob(key, sizes[key])

    return GrammarCache(compile, lambda b: b.size, **bounds), compiled


def test_cache_evicts_the_least_recently_used_past_its_entry_bound() -> None:
    cache, compiled = sized_cache({k: 10 for k in "abcde"}, max_entries=3, max_bytes=1000)
    for key in "abc":
        cache.get(key)
    cache.get("a")  # a is now the most recent: b goes first
    cache.get("d")
    assert len(cache) == 3 and "b" not in cache and all(k in cache for k in "acd")
    assert cache.get("a").key == "a" and compiled == ["a", "b", "c", "d"]
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses, stats.evictions) == (3, 30, 2, 4, 1)


def test_cache_evicts_past_its_byte_bound_and_keeps_no_entry_larger_than_it() -> None:
    cache, compiled = sized_cache({"a": 40, "b": 40, "c": 40, "huge": 500}, max_entries=10, max_bytes=100)
    for key in "abc":
        cache.get(key)
    assert cache.stats().bytes == 80 and "a" not in cache
    assert cache.get("huge").size == 500  # compiled and returned, never kept
    assert "huge" not in cache and cache.stats().bytes == 80
    cache.get("huge")
    assert compiled.count("huge") == 2


def test_cache_bounds_real_xgrammar_grammars() -> None:
    import xgrammar as xgr

    vocab = [*string.printable, '{"', '":', ',"', "}", "true", "false", "null", "</s>"]
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo(vocab, stop_token_ids=[len(vocab) - 1]), max_threads=1,
                                   cache_enabled=False)
    cache: GrammarCache[Any] = GrammarCache(lambda s: compiler.compile_json_schema(s, strict_mode=True),
                                            lambda g: int(g.memory_size_bytes), max_entries=4, max_bytes=10**9)
    schemas = [json.dumps(compile_strict_schema({**obj(**{f"p{i}": {"type": "string"}}), "required": [f"p{i}"]}))
               for i in range(10)]
    for schema in schemas:
        assert cache.get(schema) is not None
    assert len(cache) == 4 and all(s in cache for s in schemas[-4:])
    one = cache.stats().bytes // 4
    tight: GrammarCache[Any] = GrammarCache(lambda s: compiler.compile_json_schema(s, strict_mode=True),
                                            lambda g: int(g.memory_size_bytes), max_entries=100, max_bytes=3 * one)
    for schema in schemas:
        tight.get(schema)
    assert tight.stats().bytes <= 3 * one and len(tight) == 3


@pytest.mark.model
def test_the_local_engine_caches_grammars_within_its_bounds(local_engine: Any) -> None:
    cache = local_engine.grammar_cache
    assert cache.max_entries == 64 and cache.max_bytes == 256 * 1024 * 1024
    extractor = Extractor(local_engine, max_retries=0)
    extractor.run(Person, DOC)
    before = cache.stats()
    extractor.run(Person, DOC)
    after = cache.stats()
    assert after.entries == before.entries and after.hits > before.hits and after.bytes <= cache.max_bytes
