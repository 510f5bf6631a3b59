"""`extract run/batch --spans --confidence --require-grounded` and `extract view`, on a scripted
engine registered under a name (the CLI creates engines by name)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest

from extractor.cli.main import main
from extractor.engines import ENGINES

DOC = "Alice Smith is 34 years old and lives in Lisbon."
GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
INVENTED = '{"name":"Maria Garcia","age":34,"city":"Lisbon","email":null}'
MARK = re.compile(r'<mark class="c\d+[^"]*" data-field="([^"]+)" data-match="([^"]+)"[^>]*>([^<]*)</mark>')


@pytest.fixture(autouse=True)
def scripted_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ENGINES, "scripted", "extractor.engines.fake:ScriptedEngine")


def outputs(*texts: str) -> list[str]:
    return ["--engine", "scripted", "--engine-option", f"outputs={json.dumps(list(texts))}"]


def marks(page: str) -> dict[str, tuple[str, str]]:
    return {field: (match, html.unescape(text)) for field, match, text in MARK.findall(page)}


def test_run_with_spans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "alice.txt"
    doc.write_text(DOC, encoding="utf-8")
    assert main(["run", "person", str(doc), "--spans", *outputs(GOOD)]) == 0
    meta = json.loads(capsys.readouterr().out)["meta"]
    assert meta["spans"]["city"] == [{"start": 41, "end": 47, "match": "exact"}]
    assert main(["run", "person", str(doc), *outputs(GOOD)]) == 0
    assert "spans" not in json.loads(capsys.readouterr().out)["meta"]


def test_run_require_grounded_retries_then_fails_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "alice.txt"
    doc.write_text(DOC, encoding="utf-8")
    assert main(["run", "person", str(doc), "--require-grounded", "--max-retries", "1", *outputs(INVENTED, GOOD)]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["attempts"] == 2
    assert main(["run", "person", str(doc), "--require-grounded", "--max-retries", "1",
                 *outputs(INVENTED, INVENTED)]) == 1
    assert "'Maria Garcia' does not occur in the document" in capsys.readouterr().err


def batch_input(tmp_path: Path, docs: dict[str, str]) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()), encoding="utf-8")
    return path


def test_batch_with_spans_then_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = batch_input(tmp_path, {"a": DOC, "b": "Bob Stone, 51, Oslo."})
    out = tmp_path / "out.jsonl"
    bob = '{"name":"Bob Stone","age":51,"city":"Oslo","email":null}'
    assert main(["batch", "person", str(docs), "-o", str(out), "--spans", "--ordered", "--no-progress",
                 "--concurrency", "1", *outputs(GOOD, bob)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["meta"]["spans"]["name"][0]["start"] for line in lines] == [0, 0]
    page = tmp_path / "page.html"
    assert main(["view", str(out), "--docs", str(docs), "-o", str(page)]) == 0
    text = page.read_text()
    sections = text.split('<section class="item"')[1:]
    assert [marks(s) for s in sections] == [
        {"name": ("exact", "Alice Smith"), "age": ("exact", "34"), "city": ("exact", "Lisbon")},
        {"name": ("exact", "Bob Stone"), "age": ("exact", "51"), "city": ("exact", "Oslo")}]
    assert "2 documents" in capsys.readouterr().err


def write_results(tmp_path: Path, rows: list[Any]) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_view_uses_the_results_spans_when_they_have_them(tmp_path: Path) -> None:
    """meta.spans is shown as it is (here: the second "Alice" only), not recomputed."""
    text = "Alice met Alice."
    results = write_results(tmp_path, [{"id": "a", "text": text, "data": {"name": "Alice"},
                                        "meta": {"spans": {"name": [{"start": 10, "end": 15, "match": "exact"}]}}}])
    page = tmp_path / "p.html"
    assert main(["view", str(results), "-o", str(page)]) == 0
    assert "Alice met <mark" in page.read_text()


def test_view_without_texts_says_so_and_skips_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = write_results(tmp_path, [
        {"id": "a", "data": {"name": "Alice Smith"}, "meta": {}},
        '{"id": "cut',
        {"id": "b", "error": {"type": "extraction-failed", "message": "no <valid> output"}},
        {"schema": "person", "version": "1", "data": {"name": "X"}, "meta": {"file": "x.txt"}},
    ])
    assert main(["view", str(results), "-o", "-"]) == 0
    captured = capsys.readouterr()
    assert ":2: not a JSON line, skipped" in captured.err
    page = captured.out
    assert [m for m in re.findall(r'data-id="([^"]+)"', page)] == ["a", "b", "x.txt"]
    assert "3 of 3 documents have no text: pass the batch input with --docs" in page
    assert "no &lt;valid&gt; output" in page and "<mark" not in page


def test_view_limit_and_a_missing_results_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = write_results(tmp_path, [{"id": str(i), "data": {}, "meta": {}} for i in range(5)])
    assert main(["view", str(results), "-o", "-", "--limit", "2"]) == 0
    assert capsys.readouterr().out.count('<section class="item"') == 2
    assert main(["view", str(tmp_path / "nope.jsonl"), "-o", "-"]) == 2
    assert "cannot read" in capsys.readouterr().err
