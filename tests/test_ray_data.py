"""extract_dataset on a real local Ray cluster: the scripted engine (built in each actor by a
picklable factory), and the real local engine on the person fixtures."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import ray.data

from extractor import EngineUnavailable, ExtractorError, GenerationRequest, ScriptedEngine, UnknownSchema
from extractor.batch.ray_data import OUTPUT_COLUMNS, extract_dataset
from extractor.pipeline.prompt import OPEN
from schemas import Person
from tests.conftest import FIXTURES, ROOT


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    # workers import this module by name (the engine factory below pickles by reference): PYTHONPATH
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
                                       "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}})
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.execution_options.preserve_order
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True  # the output's order is the input's, to check it
    yield
    context.enable_progress_bars, context.execution_options.preserve_order = saved
    ray.shutdown()


def person_script(request: GenerationRequest) -> str:
    """`Name, age, city` documents become that person; a document saying `garbled` gets invalid JSON."""
    last = request.messages[-1]["content"]
    if "garbled" in str(request.messages):
        return "{not json"
    name, age, city = last.split(OPEN + "\n", 1)[1].split("\n", 1)[0].split(", ")
    return json.dumps({"name": name, "age": int(age), "city": city, "email": None})


def scripted_engine() -> ScriptedEngine:
    return ScriptedEngine(person_script)


def rows(ds: ray.data.Dataset) -> list[dict[str, Any]]:
    return list(ds.take_all())


def test_rows_keep_ids_and_order_with_per_item_errors_as_values() -> None:
    texts = ["Alice Smith, 34, Lisbon", "garbled text", "", None, "Kenji Sato, 19, Osaka", "John Doe, 28, Paris",
             "Maria Garcia, 41, Porto"]
    ds = ray.data.from_items([{"id": 100 + i, "text": t} for i, t in enumerate(texts)])
    out = rows(extract_dataset(ds, Person, engine=scripted_engine, options={"max_retries": 0}, concurrency=2, batch_size=2))

    assert [r["id"] for r in out] == [str(100 + i) for i in range(len(texts))]
    assert all(set(r) == set(OUTPUT_COLUMNS) for r in out)
    ok = {r["id"]: json.loads(r["data"]) for r in out if r["error"] is None}
    assert ok == {"100": {"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None},
                  "104": {"name": "Kenji Sato", "age": 19, "city": "Osaka", "email": None},
                  "105": {"name": "John Doe", "age": 28, "city": "Paris", "email": None},
                  "106": {"name": "Maria Garcia", "age": 41, "city": "Porto", "email": None}}
    errors = {r["id"]: json.loads(r["error"]) for r in out if r["error"] is not None}
    assert {i: e["type"] for i, e in errors.items()} == {"101": "extraction-failed", "102": "empty-document",
                                                          "103": "document-error"}
    assert all(e["message"] for e in errors.values())
    assert len(errors["101"]["errors"]) == 1  # max_retries=0: one attempt
    assert all(r["data"] is None and r["meta"] is None for r in out if r["error"])
    meta = json.loads(out[0]["meta"])
    assert (meta["schema"], meta["version"], meta["engine"], meta["model"], meta["attempts"]) == (
        "person", "3", "fake", "scripted", 1)


def test_schema_by_name_other_columns_and_parquet_round_trip(tmp_path: Any) -> None:
    items = [{"doc_id": f"d{i}", "body": f"Person {i}, {20 + i}, Oslo", "extra": i} for i in range(5)]
    ds = ray.data.from_items([*items, {"doc_id": "d5", "body": "garbled", "extra": 5}])
    out = extract_dataset(ds, "person", engine=scripted_engine, text_column="body", id_column="doc_id", batch_size=3)
    out.write_parquet(str(tmp_path / "people"))
    back = {r["id"]: r for r in rows(ray.data.read_parquet(str(tmp_path / "people")))}
    assert sorted(back) == [f"d{i}" for i in range(6)]
    assert [json.loads(back[f"d{i}"]["data"])["age"] for i in range(5)] == [20, 21, 22, 23, 24]
    assert len(json.loads(back["d5"]["error"])["errors"]) == 3  # the default max_retries=2: three attempts


def test_a_missing_text_column_fails_the_dataset() -> None:
    ds = ray.data.from_items([{"id": "a", "body": "Alice Smith, 34, Lisbon"}])
    with pytest.raises(ray.exceptions.RayTaskError, match="DocumentError: the dataset has no 'text' column"):
        rows(extract_dataset(ds, Person, engine=scripted_engine))


def test_an_engine_failure_fails_the_dataset() -> None:
    down = functools.partial(ScriptedEngine, [EngineUnavailable("engine down")] * 10)
    ds = ray.data.from_items([{"id": "a", "text": "Alice Smith, 34, Lisbon"}])
    with pytest.raises(ray.exceptions.RayTaskError, match="EngineUnavailable: engine down"):
        rows(extract_dataset(ds, Person, engine=down))


def test_bad_arguments_fail_before_anything_runs() -> None:
    ds = ray.data.from_items([{"id": "a", "text": "x"}])
    with pytest.raises(UnknownSchema):
        extract_dataset(ds, "no-such-schema")
    with pytest.raises(ExtractorError, match="unknown engine 'nope'"):
        extract_dataset(ds, Person, engine="nope")
    with pytest.raises(ValueError, match="engine_options"):
        extract_dataset(ds, Person, engine=scripted_engine, engine_options={"model": "x"})
    with pytest.raises(ValueError, match="nonsense"):
        extract_dataset(ds, Person, options={"nonsense": True})
    with pytest.raises(ValueError, match="concurrency"):
        extract_dataset(ds, Person, concurrency=0)


PEOPLE = [("alice.txt", "Alice Smith", 34), ("john.txt", "John Doe", 28), ("kenji.txt", "Kenji Sato", 19),
          ("maria.txt", "Maria Garcia", 41), ("omar.txt", "Omar Haddad", 52)]


@pytest.mark.model
def test_local_engine_extracts_the_person_fixtures() -> None:
    ds = ray.data.from_items([{"id": f, "text": (FIXTURES / "person" / f).read_text()} for f, _, _ in PEOPLE])
    out = rows(extract_dataset(ds, "person", engine="local", batch_size=len(PEOPLE)))
    assert [r["id"] for r in out] == [f for f, _, _ in PEOPLE]
    assert [r["error"] for r in out] == [None] * len(PEOPLE)
    got = [json.loads(r["data"]) for r in out]
    assert [(p["name"], p["age"]) for p in got] == [(name, age) for _, name, age in PEOPLE]
    assert {json.loads(r["meta"])["engine"] for r in out} == {"local"}
