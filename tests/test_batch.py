"""pipeline.many.run_many / Extractor.iter_many with the scripted engine, and the batch file format."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from pathlib import Path

import pytest

from extractor import EngineUnavailable, Extractor, GenerationRequest, ScriptedEngine
from extractor.batch.jsonl import ResultsFile, read_documents
from extractor.pipeline.many import Document
from schemas import Person


def echo_engine(delay_for: dict[str, float] | None = None) -> ScriptedEngine:
    """Answers each document with a person named after it; 'bad' documents get invalid JSON."""
    def script(request: GenerationRequest) -> str:
        doc = request.messages[-1]["content"] if request.messages[-1]["role"] == "user" else ""
        if "That JSON was rejected" in doc or "bad" in str(request.messages):
            return "{not json"
        name = doc.split("\n")[1]
        return json.dumps({"name": name, "age": 30, "city": "Oslo", "email": None})
    return ScriptedEngine(script)


class SlowSecond(ScriptedEngine):
    """The second document takes longest, so completion order differs from input order (the first
    runs alone, as the batch's pilot)."""

    async def generate(self, requests):  # type: ignore[no-untyped-def]
        content = requests[0].messages[-1]["content"]
        await asyncio.sleep(0.05 if "doc1" in content else 0.0)
        return await super().generate(requests)


def test_iter_many_in_order_with_errors_as_values() -> None:
    extractor = Extractor(echo_engine(), max_retries=0)
    docs = ["doc0", "bad doc1", "doc2", "   "]
    items = list(extractor.iter_many(Person, docs, concurrency=2))
    assert [i.id for i in items] == ["0", "1", "2", "3"]
    assert [i.ok for i in items] == [True, False, True, False]
    assert items[0].extraction is not None and items[0].extraction.data.name == "doc0"
    assert items[1].to_dict()["error"]["type"] == "extraction-failed"
    assert items[3].to_dict()["error"]["type"] == "empty-document"


def test_as_completed_order_differs_and_concurrency_is_bounded() -> None:
    engine = SlowSecond(echo_engine()._script)  # type: ignore[arg-type]
    extractor = Extractor(engine, max_retries=0)
    in_flight = peak = 0
    original = engine.generate

    full = asyncio.Event()

    async def counting(requests):  # type: ignore[no-untyped-def]
        # each call waits (a little) for the others to fill the bound: on a busy box the quick
        # documents would otherwise finish before three are ever in flight at once
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= 3:
            full.set()
        try:
            if in_flight > 1:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(full.wait(), 1.0)
            return await original(requests)
        finally:
            in_flight -= 1

    engine.generate = counting  # type: ignore[method-assign]
    docs = [(f"id{i}", f"doc{i}") for i in range(10)]
    items = list(extractor.iter_many(Person, docs, concurrency=3, ordered=False))
    assert sorted(i.id for i in items) == sorted(d[0] for d in docs)
    assert items[1].id != "id1"  # the slow second document came later
    assert peak == 3


def test_the_first_document_runs_alone_before_the_rest() -> None:
    """The pilot: nothing else starts until the first document's extraction has finished."""
    engine = echo_engine()
    original = engine.generate
    events: list[str] = []

    async def logging_generate(requests):  # type: ignore[no-untyped-def]
        doc = requests[0].messages[-1]["content"].split("\n")[1]
        events.append(f"start {doc}")
        await asyncio.sleep(0.01)
        try:
            return await original(requests)
        finally:
            events.append(f"end {doc}")

    engine.generate = logging_generate  # type: ignore[method-assign]
    items = list(Extractor(engine, max_retries=0).iter_many(Person, [f"doc{i}" for i in range(6)], concurrency=4))
    assert [i.ok for i in items] == [True] * 6
    assert events[:2] == ["start doc0", "end doc0"]
    assert max(events.index(f"end doc{i}") for i in range(1, 6)) > events.index("start doc5") > 2  # then concurrent


def test_engine_failure_stops_the_batch() -> None:
    extractor = Extractor(ScriptedEngine([EngineUnavailable("down")] * 5))
    with pytest.raises(EngineUnavailable):
        list(extractor.iter_many(Person, ["a", "b"]))


def test_read_documents_jsonl_csv_folder(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "x"}\n\n{"id": 7, "text": "y"}\n')
    assert [(d.id, d.text) for d in read_documents(tmp_path / "in.jsonl")] == [("a", "x"), ("7", "y")]
    (tmp_path / "in.csv").write_text('id,text\nr1,"hello, world"\n,second\n')
    assert [(d.id, d.text) for d in read_documents(tmp_path / "in.csv")] == [("r1", "hello, world"), ("2", "second")]
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("A")
    (folder / "sub" / "b.md").write_text("B")
    (folder / "bin.txt").write_bytes(b"\xff\xfe")
    docs = list(read_documents(folder))
    assert [d.id for d in docs] == ["a.txt", "bin.txt", "sub/b.md"]
    assert docs[1].error is not None and docs[1].error.code == "undecodable-document"


def test_results_file_drops_a_cut_line_and_knows_its_ids(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    results = ResultsFile(path)
    results.write({"id": "a", "data": {}, "meta": {}})
    results.write({"id": "b", "error": {"type": "x", "message": "m"}})
    results.close()
    with path.open("ab") as f:
        f.write(b'{"id": "c", "data": {"na')  # kill -9 in the middle of a line
    again = ResultsFile(path)
    assert "a" in again.done and "b" in again.done and "c" not in again.done and len(again.done) == 2
    assert again.counts == {"ok": 1, "failed": 1, "dropped_failed": 0}
    again.close()
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("\n")
    retry = ResultsFile(path, retry_failed=True)  # the failed id runs again: its error line goes
    assert "a" in retry.done and "b" not in retry.done and retry.counts["dropped_failed"] == 1
    retry.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a"]


def test_random_documents_all_come_back_once() -> None:
    rng = random.Random(7)
    docs = [Document(f"d{i}", f"doc{i}" if rng.random() > 0.2 else "bad") for i in range(200)]
    items = list(Extractor(echo_engine(), max_retries=0).iter_many(Person, docs, concurrency=17, ordered=False))
    assert sorted(i.id for i in items) == sorted(d.id for d in docs)



@pytest.mark.model
def test_extract_batch_survives_kill_9_and_resumes_without_loss_or_repeats(tmp_path: Path) -> None:
    """The real CLI and local engine: kill -9 midway, rerun, every id exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from bench.person_records import person_records

    records = person_records(16)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in records))
    cmd = [sys.executable, "-m", "extractor", "batch", "person", str(src), "-o", str(out), "--concurrency", "2",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = out.read_text().count("\n")
    assert 3 <= first < len(records), "the kill came too late to test a resume"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{first} already done" in rerun.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(r["id"] for r in records)  # nothing lost, nothing twice


def test_read_documents_parquet_with_id_and_text_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"doc_id": ["x1", "x2"], "body": ["first", "second"]}), tmp_path / "in.parquet")
    docs = list(read_documents(tmp_path / "in.parquet", text_field="body", id_field="doc_id"))
    assert [(d.id, d.text) for d in docs] == [("x1", "first"), ("x2", "second")]
    with pytest.raises(Exception, match="no 'text' column"):
        list(read_documents(tmp_path / "in.parquet"))
