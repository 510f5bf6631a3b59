"""The labeled dev sets (fixtures/dev/): big enough, exactly what their generator writes, and every
`expected` a valid record of its schema that the document really supports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from extractor import default_registry
from extractor.eval.metrics import normalize_string
from extractor.eval.run import label_errors, read_dataset
from tests.conftest import FIXTURES

DEV = FIXTURES / "dev"
SCHEMAS = ["person", "invoice", "receipt", "job_posting"]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_dev_sets", DEV / "make_dev_sets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(schema: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DEV / f"{schema}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_every_shipped_schema_has_a_dev_set_of_at_least_30_documents() -> None:
    assert sorted(SCHEMAS) == sorted(default_registry().names())
    for schema in SCHEMAS:
        data = rows(schema)
        assert len(data) >= 30, schema
        assert len({r["id"] for r in data}) == len(data)
        assert len({r["text"] for r in data}) == len(data), f"{schema}: a document is repeated"


@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_expected_validates_against_the_schema_model(schema: str) -> None:
    task = default_registry().get(schema)
    assert task.model is not None
    for row in rows(schema):
        assert label_errors(task, row["expected"], row["text"]) == [], row["id"]
        # the model's validators keep every value (e.g. person.email is kept only if it is in the document)
        value = task.model.model_validate(row["expected"], context={"document": row["text"]})
        assert value.model_dump(mode="json") == row["expected"], row["id"]
    assert len(read_dataset(DEV / f"{schema}.jsonl", task)) == len(rows(schema))


def test_the_files_are_what_the_seeded_generator_writes() -> None:
    make = generator()
    for schema in SCHEMAS:
        assert make.render(schema) == (DEV / f"{schema}.jsonl").read_text(encoding="utf-8"), schema
    assert make.main(["--check"]) == 0


def _in(value: str, text: str) -> bool:
    return normalize_string(value) in normalize_string(text)


def test_verbatim_values_occur_in_their_documents() -> None:
    """Values a reader copies from the document are in it (case and whitespace aside)."""
    verbatim = {"person": ["name", "city", "email"], "invoice": ["vendor", "invoice_number"],
                "receipt": ["company", "address", "date", "total"], "job_posting": ["title", "company"]}
    for schema, fields in verbatim.items():
        for row in rows(schema):
            for f in fields:
                value = row["expected"][f]
                assert value is None or _in(value, row["text"]), (row["id"], f, value)
            for item in row["expected"].get("line_items") or row["expected"].get("items") or []:
                assert _in(item["description"], row["text"]), (row["id"], item)
            for skill in row["expected"].get("skills", []):
                assert _in(skill, row["text"]), (row["id"], skill)


def test_invoice_items_add_up_and_receipts_print_their_total() -> None:
    for row in rows("invoice"):
        e = row["expected"]
        assert sum(i["quantity"] * i["unit_price"] for i in e["line_items"]) == pytest.approx(e["total"], abs=1e-6), row["id"]
    for row in rows("receipt"):
        total_lines = [line for line in row["text"].splitlines() if "TOTAL" in line.upper() and "SUB" not in line.upper()]
        assert total_lines and total_lines[-1].split()[-1] == row["expected"]["total"], row["id"]


def test_the_sets_vary_in_layout_and_labels() -> None:
    """Not one template: several layouts and a mix of null and non-null optional values."""
    person = rows("person")
    assert 0.3 < sum(r["expected"]["email"] is not None for r in person) / len(person) < 0.7
    jobs = rows("job_posting")
    assert {r["expected"]["employment_type"] for r in jobs} >= {"full_time", "part_time", "contract", "temporary", "internship"}
    assert 0.15 < sum(r["expected"]["salary_range"] is None for r in jobs) / len(jobs) < 0.6
    assert any(r["expected"]["location"] == "remote" for r in jobs)
    receipts = rows("receipt")
    assert any(r["expected"]["items"] is None for r in receipts) and any(r["expected"]["items"] for r in receipts)
    invoices = rows("invoice")
    assert len({r["expected"]["currency"] for r in invoices}) >= 8
    assert len({r["text"].splitlines()[0][:2] for r in invoices}) > 5
    assert {len(r["expected"]["line_items"]) for r in invoices} >= {1, 2, 3}
    assert all(Path(DEV / "README.md").read_text().count(s) for s in SCHEMAS)
