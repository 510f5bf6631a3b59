"""`extract batch` reruns (issue 17, items 8 and 10): the done ids skipped, `--retry-failed` runs the
failed ones again, and `--summary-json` is written even when there is nothing left to do."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from extractor import Engine, GenerationRequest, GenerationResult
from extractor.cli.main import main
from extractor.engines import registry

GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'


class FlakyEngine(Engine):
    """Valid for every document, except those holding "flaky" while `broken` is set."""

    name = "flaky"
    model = "scripted"
    broken = True

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [GenerationResult("{}" if FlakyEngine.broken and "flaky" in r.messages[-1]["content"] else GOOD,
                                 "stop", 1, 1) for r in requests]


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ENGINES, "flaky", f"{__name__}:FlakyEngine")
    FlakyEngine.broken = True


def run_batch(inp: Path, out: Path, summary: Path, *extra: str) -> int:
    return main(["batch", "person", str(inp), "-o", str(out), "--engine", "flaky", "--no-progress", "--max-retries", "0",
                 "--summary-json", str(summary), *extra])


def test_rerun_skips_done_ids_and_retry_failed_runs_the_failed_ones_again(tmp_path: Path, flaky: None) -> None:
    inp, out, summary = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "summary.json"
    docs = [{"id": f"d{i}", "text": f"Alice Smith, 34, Lisbon {'flaky' if i % 3 == 0 else ''}"} for i in range(9)]
    inp.write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert run_batch(inp, out, summary) == 1  # three failed
    first = json.loads(summary.read_text())
    assert (first["ok"], first["failed"]) == (6, 3)

    summary.unlink()
    assert run_batch(inp, out, summary) == 0  # nothing to do, and the summary says so
    again = json.loads(summary.read_text())
    assert (again["total"], again["skipped"]) == (0, 9)

    FlakyEngine.broken = False
    assert run_batch(inp, out, summary, "--retry-failed") == 0
    retried = json.loads(summary.read_text())
    assert (retried["ok"], retried["failed"], retried["retried_failed"], retried["skipped"]) == (3, 0, 3, 6)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(d["id"] for d in docs)  # each id once, every one ok
    assert all("data" in r for r in rows)
