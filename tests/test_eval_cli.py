"""`extract eval` end to end: the CLI with a scripted engine, the report files, --compare, bad input;
and (marked `model`) a small slice of the person dev set through the real local engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extractor import Extractor, ScriptedEngine, default_registry
from extractor.cli.main import main
from extractor.engines import ENGINES
from extractor.errors import DocumentError
from extractor.eval.report import build_report, compare_reports, load_report, render_html
from extractor.eval.run import LabeledDocument, evaluate, read_dataset
from tests.conftest import FIXTURES

DOCS = [
    ("d1", "Alice Smith is 34 and lives in Lisbon.", {"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None}),
    ("d2", "Bob Stone, 51, Porto. Mail: bob@example.org", {"name": "Bob Stone", "age": 51, "city": "Porto",
                                                           "email": "bob@example.org"}),
    ("d3", "Carla Diaz (29) lives in Rome.", {"name": "Carla Diaz", "age": 29, "city": "Rome", "email": None}),
]
#: run A: d1 right (case and spaces differ), d2 one wrong age and a missed email, d3 never valid
ANSWERS_A = {DOCS[0][1]: {"name": "alice  SMITH", "age": 34, "city": "Lisbon", "email": None},
             DOCS[1][1]: {"name": "Bob Stone", "age": 50, "city": "Porto", "email": None},
             DOCS[2][1]: "not json"}
#: run B: d2's age right, d3 valid but with the wrong city
ANSWERS_B = {**ANSWERS_A, DOCS[1][1]: {"name": "Bob Stone", "age": 51, "city": "Porto", "email": None},
             DOCS[2][1]: {"name": "Carla Diaz", "age": 29, "city": "Milan", "email": None}}


@pytest.fixture
def answers_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `--engine answers` build tests.eval_support.AnswerFileEngine."""
    monkeypatch.setitem(ENGINES, "answers", "tests.eval_support:AnswerFileEngine")


def write_dataset(tmp_path: Path) -> Path:
    path = tmp_path / "people.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t, "expected": e}) + "\n" for i, t, e in DOCS))
    return path


def run_eval(tmp_path: Path, answers: dict[str, Any], out: str, *extra: str) -> tuple[int, dict[str, Any]]:
    answers_file = tmp_path / f"{out}.answers.json"
    answers_file.write_text(json.dumps(answers))
    report = tmp_path / f"{out}.json"
    code = main(["eval", "person", str(write_dataset(tmp_path)), "-o", str(report), "--engine", "answers",
                 "--engine-option", f"answers={answers_file}", "--no-progress", *extra])
    return code, json.loads(report.read_text()) if report.exists() else {}


def test_eval_cli_writes_a_report_with_hand_computed_metrics(tmp_path: Path, answers_engine: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_eval(tmp_path, ANSWERS_A, "a")
    assert code == 0
    assert report["schema"] == "person" and report["engine"] == "answers" and report["model"] == "answer-file"
    assert report["documents"] == 3 and report["valid"] == 2 and report["validity_rate"] == pytest.approx(0.6667)
    assert report["attempts"] == {"mean": pytest.approx(1.667), "max": 3, "retried": 1, "total": 5}
    fields = report["fields"]
    assert (fields["name"]["tp"], fields["name"]["fp"], fields["name"]["fn"]) == (2, 0, 1)
    assert fields["name"]["f1"] == pytest.approx(0.8) and fields["name"]["exact_match"] == pytest.approx(0.6667)
    assert (fields["age"]["precision"], fields["age"]["recall"], fields["age"]["f1"]) == (0.5, pytest.approx(0.3333), 0.4)
    assert (fields["email"]["precision"], fields["email"]["recall"], fields["email"]["support"]) == (1.0, 0.0, 1)
    assert report["summary"]["macro_f1"] == pytest.approx(0.5)
    assert report["summary"]["micro"]["f1"] == pytest.approx(0.625)
    assert report["summary"]["document_exact_match"] == pytest.approx(0.3333)
    per_doc = {d["id"]: d for d in report["per_document"]}
    assert per_doc["d1"]["exact"] and per_doc["d2"]["mismatched"] == ["age", "email"]
    assert per_doc["d3"]["error"]["type"] == "extraction-failed" and per_doc["d3"]["predicted"] is None
    assert report["docs_per_s"] > 0
    page = (tmp_path / "a.html").read_text()
    assert page.startswith("<!doctype html>") and "d3" in page and "extraction-failed" in page and "age" in page
    out = capsys.readouterr()
    assert "macro F1" in out.out and "age" in out.out and "wrote" in out.err


def test_eval_compare_prints_and_writes_per_field_deltas(tmp_path: Path, answers_engine: None,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run_eval(tmp_path, ANSWERS_A, "a")
    run_eval(tmp_path, ANSWERS_B, "b")
    capsys.readouterr()
    deltas = tmp_path / "deltas.json"
    assert main(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(deltas)]) == 0
    cmp = json.loads(deltas.read_text())
    # B: age 3 TP of 3 (F1 1.0, A had 0.4); city TP 2, FP 1, FN 1 (F1 2/3, A had 0.8)
    assert cmp["fields"]["age"]["f1"] == {"a": 0.4, "b": 1.0, "delta": 0.6}
    assert cmp["fields"]["city"]["f1"]["b"] == pytest.approx(0.6667) and cmp["fields"]["city"]["f1"]["delta"] == pytest.approx(-0.1333)
    assert cmp["summary"]["validity_rate"]["delta"] == pytest.approx(0.3333)
    assert cmp["notes"] == []
    printed = capsys.readouterr().out
    age_line = next(line for line in printed.splitlines() if line.startswith("age "))
    assert "+0.600" in age_line and "0.400" in age_line


def test_eval_require_grounded_refuses_values_found_nowhere(tmp_path: Path, answers_engine: None) -> None:
    """B's d3 city (Milan) is not in its document: with --require-grounded every attempt is refused."""
    code, plain = run_eval(tmp_path, ANSWERS_B, "plain")
    assert code == 0 and plain["valid"] == 3 and plain["require_grounded"] is False
    code, grounded = run_eval(tmp_path, ANSWERS_B, "grounded", "--require-grounded")
    assert code == 0 and grounded["require_grounded"] is True
    d3 = next(d for d in grounded["per_document"] if d["id"] == "d3")
    assert d3["error"]["type"] == "extraction-failed" and "Milan" in d3["error"]["message"] and d3["attempts"] == 3
    # city: the wrong Milan was an FP + FN; refused, it is only an FN, so precision rises
    assert (plain["fields"]["city"]["fp"], grounded["fields"]["city"]["fp"]) == (1, 0)
    assert grounded["fields"]["city"]["precision"] == 1.0


def test_compare_notes_reports_of_different_schemas() -> None:
    a = {"schema": "person", "dataset": "x", "documents": 3, "engine": "local", "model": "m", "validity_rate": 1.0,
         "summary": {"macro_f1": 0.5, "micro": {"f1": 0.5}, "document_exact_match": 0.0}, "attempts": {"mean": 1.0},
         "docs_per_s": 1.0, "fields": {"name": {"f1": 0.5, "precision": 0.5, "recall": 0.5, "exact_match": 0.5}}}
    b = {**a, "schema": "invoice", "fields": {"vendor": {"f1": 1.0, "precision": 1.0, "recall": 1.0, "exact_match": 1.0}}}
    cmp = compare_reports(a, b)
    assert cmp["notes"] == ["schema differs: 'person' vs 'invoice'"]
    assert cmp["fields"]["name"]["f1"] == {"a": 0.5, "b": None, "delta": None}
    assert cmp["fields"]["vendor"]["f1"] == {"a": None, "b": 1.0, "delta": None}


def test_eval_usage_and_input_errors(tmp_path: Path, answers_engine: None, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_dataset(tmp_path)
    assert main(["eval", "person", str(dataset)]) == 2  # no -o
    assert main(["eval", "person", str(dataset), "--compare", "a.json", "b.json"]) == 2
    assert main(["eval", "person"]) == 2
    assert main(["eval", "nosuchschema", str(dataset), "-o", str(tmp_path / "r.json")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "text": "Al, 3", "expected": {"name": "Al", "age": 300, "city": "X",
                                                                        "email": None}}) + "\n")
    assert main(["eval", "person", str(bad), "-o", str(tmp_path / "r.json"), "--engine", "answers",
                 "--engine-option", "answers=/nonexistent"]) == 1
    assert "bad.jsonl:1: 'expected' is not a valid person record: $.age" in capsys.readouterr().err
    not_report = tmp_path / "n.json"
    not_report.write_text("{}")
    assert main(["eval", "--compare", str(not_report), str(not_report)]) == 1
    assert "not an evaluation report" in capsys.readouterr().err


def test_read_dataset_refuses_duplicates_and_malformed_lines(tmp_path: Path) -> None:
    task = default_registry().get("person")
    ok = {"text": "Al Bo, 30, Oslo.", "expected": {"name": "Al Bo", "age": 30, "city": "Oslo", "email": None}}
    cases = {"dup": [{"id": "a", **ok}, {"id": "a", **ok}], "shape": [{"id": "a", "text": "x"}], "empty": []}
    for name, rows in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(DocumentError, match={"dup": "duplicate id 'a'", "shape": "object 'expected'",
                                                 "empty": "no labeled documents"}[name]):
            read_dataset(path, task)
    (tmp_path / "j.jsonl").write_text("{not json\n")
    with pytest.raises(DocumentError, match=r"j\.jsonl:1: not a JSON line"):
        read_dataset(tmp_path / "j.jsonl", task)
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"id": str(i), **ok}) + "\n" for i in range(5)))
    assert [d.id for d in read_dataset(many, task, limit=2)] == ["0", "1"]


def test_evaluate_with_a_scripted_engine_directly() -> None:
    """The library path without the CLI: outcomes in input order, failures as outcomes."""
    task = default_registry().get("person")
    docs = [LabeledDocument(i, t, e) for i, t, e in DOCS]

    def script(request: Any) -> str:
        document = next(t for _, t, _ in DOCS if any(t in m["content"] for m in request.messages))
        return "oops" if "Carla" in document else json.dumps(ANSWERS_A[document])

    run = evaluate(Extractor(ScriptedEngine(script), max_retries=1), task, docs, dataset="mem")
    assert [o.id for o in run.outcomes] == ["d1", "d2", "d3"]
    assert run.outcomes[2].error is not None and run.outcomes[2].attempts == 2 and run.max_retries == 1
    assert run.outcomes[0].predicted == {"name": "alice  SMITH", "age": 34, "city": "Lisbon", "email": None}
    report = build_report(run)
    assert report["fields"]["name"]["f1"] == pytest.approx(0.8) and report["engine"] == "fake"


def test_html_summary_escapes_values_and_allows_no_script() -> None:
    task = default_registry().get("person")
    hostile = "<script>alert(1)</script>"
    docs = [LabeledDocument("x<1>", f"{hostile} is 30 and lives in Oslo.",
                            {"name": hostile, "age": 30, "city": "Oslo", "email": None})]
    answer = json.dumps({"name": "<img src=x onerror=alert(1)>", "age": 30, "city": "Oslo", "email": None})
    page = render_html(build_report(evaluate(Extractor(ScriptedEngine([answer])), task, docs)))
    assert "<script>" not in page and "<img" not in page and "&lt;script&gt;" in page and "x&lt;1&gt;" in page
    assert "default-src 'none'" in page


def test_load_report_round_trip(tmp_path: Path, answers_engine: None) -> None:
    run_eval(tmp_path, ANSWERS_A, "a")
    assert load_report(tmp_path / "a.json")["fields"]["age"]["f1"] == 0.4


@pytest.mark.model
def test_eval_person_slice_with_the_local_engine(tmp_path: Path) -> None:
    """5 documents of the person dev set through the real model: a sane report (no timing asserts)."""
    out = tmp_path / "person.json"
    code = main(["eval", "person", str(FIXTURES / "dev" / "person.jsonl"), "--limit", "5", "-o", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["engine"] == "local" and report["documents"] == 5
    assert report["validity_rate"] == 1.0
    # Greedy SmolLM2-135M gets 3 or 4 of these 5 names and cities right; which ones varies with the
    # CPU's float kernels (0.6 in CI, 0.8 here for names), so the floor is 2 of 5: the model read them.
    assert report["fields"]["name"]["f1"] >= 0.4
    assert report["fields"]["city"]["f1"] >= 0.4
    assert set(report["fields"]) == {"name", "age", "city", "email"}
    assert report["attempts"]["mean"] >= 1.0 and report["docs_per_s"] > 0
    assert (tmp_path / "person.html").exists()
