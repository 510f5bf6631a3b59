"""Long documents: chunk boundaries, merge by source span, conflicts, passes, completeness,
streaming, batching of a document's chunks. A `ScriptedEngine` reads each chunk as a perfect
model would (tests/long_support.py), so what is tested is the chunking and the merging: every
merged value's span must point at the right characters of the whole document."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Sequence
from typing import Any

import httpx2
import pytest
from pydantic import field_validator

from extractor import AsyncClient, Extractor, GenerationRequest, GenerationResult, ScriptedEngine, task_from_json_schema
from extractor.contracts.contract import Contract
from extractor.errors import ExtractionFailed, MergeConflict
from extractor.longdoc.merge import merge_records
from extractor.longdoc.split import split_document
from fixtures.long.generate import documents
from schemas.invoice import LineItem
from tests.long_support import ITEM, answer, chunk_text, read_invoice, read_people, reader
from tests.service_support import BASE, make_app

DOCS = {d["id"]: d for d in documents()}


class CountingEngine(ScriptedEngine):
    """Counts `generate` calls and the requests of each."""

    def __init__(self, outputs: Any = reader) -> None:
        super().__init__(outputs)
        self.calls: list[int] = []

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls.append(len(requests))
        return await super().generate(requests)


def _items(data: Any) -> list[dict[str, Any]]:
    return [i.model_dump() for i in data.line_items]


def _check_item_spans(text: str, result: Any) -> None:
    """Every item's description and unit price span points at those characters, on the item's line."""
    spans = result.meta.spans
    for k, item in enumerate(result.data.line_items):
        (desc,) = spans[f"line_items[{k}].description"]
        (price,) = spans[f"line_items[{k}].unit_price"]
        assert text[desc.start:desc.end] == item.description
        assert float(text[price.start:price.end].replace(",", "")) == item.unit_price
        assert text.count("\n", desc.start, price.start) == 0  # the same line


# -- splitting ----------------------------------------------------------------------------------

def test_chunks_cover_the_document_overlap_and_carry_the_table_header() -> None:
    text = DOCS["invoice-02-75"]["text"]
    chunks = split_document(text, 900)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end and b.start > a.start  # overlapping, always moving on
        assert text[b.start:b.end] == b.body
    carried = [c for c in chunks if c.header is not None]
    assert carried and all(c.header.startswith("Description") and "Qty" in c.header for c in carried)
    for c in carried:  # the carried header's characters map to the header printed in the document
        assert text[c.to_document(0):c.to_document(len(c.header) - 1) + 1] == c.header
        assert text[c.to_document(c.prefix_len):c.to_document(c.prefix_len) + 10] == c.body[:10]


def test_a_chunk_ends_at_a_page_break_when_one_is_near() -> None:
    page = "\n".join(f"line {i} of some text here" for i in range(20))
    text = f"{page}\n\f{page}\n\f{page}\n"
    chunks = split_document(text, len(page) + 40)
    assert all(c.body.endswith("\n") for c in chunks[:-1])
    assert chunks[0].end == text.index("\f")  # not at the budget: at the page


def test_a_line_longer_than_a_chunk_is_cut_at_whitespace() -> None:
    text = " ".join(f"word{i}" for i in range(400))
    chunks = split_document(text, 300)
    assert all(len(c.body) <= 300 for c in chunks)
    assert "".join(c.body for c in chunks) == text  # pieces of one line: no overlap, nothing lost
    assert all(c.body.endswith(" ") for c in chunks[:-1])


# -- merging by span: the boundary cases -----------------------------------------------------------

def test_long_invoice_merges_to_the_labelled_record_with_spans_into_the_whole_document() -> None:
    doc = DOCS["invoice-11-300"]  # 22,000 characters, 300 items, some bought twice
    result = Extractor(ScriptedEngine(reader)).run("invoice", doc["text"], spans=True, grounded_decoding=False,
                                                   chunk_tokens=400)
    assert result.data.model_dump(mode="json") == doc["label"]
    assert result.meta.long["chunks"] > 10 and result.meta.long["conflicts"] == []
    assert result.meta.long["completeness"][0] | {"complete": True, "printed_count": 300, "count": 300} \
        == result.meta.long["completeness"][0]
    _check_item_spans(doc["text"], result)
    (total,) = result.meta.spans["total"]
    assert doc["text"][total.start:total.end] == f"{doc['label']['total']:,.2f}"


def test_a_table_header_is_repeated_into_every_chunk_that_starts_inside_the_table() -> None:
    doc = DOCS["invoice-03-90"]
    engine = ScriptedEngine(reader)
    Extractor(engine).run("invoice", doc["text"], grounded_decoding=False, chunk_tokens=300)
    texts = [chunk_text(r) for r in engine.requests]
    inside = [t for t in texts[1:] if re.match(r"^\S.*\s{2,}\d+\s+[\d,]+\.\d\d", t.split("\n")[1] if "\n" in t else "")]
    assert inside and all(t.startswith("Description") for t in inside)


def test_a_repeated_row_is_kept_and_a_row_read_by_two_chunks_is_one() -> None:
    rows = [("Steel hinge 10 mm", 2, 4.5), ("Oak panel large", 1, 30.0), ("Steel hinge 10 mm", 2, 4.5)] * 10
    body = "\n".join(f"{d:<30}{q:>5}{p:>10.2f}{q * p:>10.2f}" for d, q, p in rows)
    total = sum(q * p for _, q, p in rows)
    text = (f"INVOICE\nACME Tools Ltd\nInvoice number: INV-1\nInvoice date: 01 March 2024\nCurrency: EUR\n"
            f"{'Description':<30}{'Qty':>5}{'Price':>10}{'Amount':>10}\n{body}\nTotal due: {total:,.2f}\n")
    result = Extractor(ScriptedEngine(reader)).run("invoice", text, spans=True, grounded_decoding=False,
                                                   chunk_tokens=100)
    assert result.meta.long["chunks"] >= 4
    assert [(i["description"], i["quantity"], i["unit_price"]) for i in _items(result.data)] == \
        [(d, float(q), p) for d, q, p in rows]
    starts = [result.meta.spans[f"line_items[{k}].description"][0].start for k in range(len(rows))]
    assert len(set(starts)) == len(rows) and starts == sorted(starts)  # each row its own line
    _check_item_spans(text, result)


def test_a_record_printed_across_a_chunk_boundary_is_read_once_from_the_chunk_holding_it_whole() -> None:
    first = ["Anna", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kaia", "Luca"]
    people = [(f"{n} Name", 20 + i, "Lisbon") for i, n in enumerate(first)]
    text = "STAFF\n" + "".join(f"{n}, {a},\nlives in {c} and works.\n" for n, a, c in people)

    def multi_line(request: GenerationRequest) -> str:
        return json.dumps(read_people(chunk_text(request).replace(",\nlives", ", lives")))

    result = Extractor(ScriptedEngine(multi_line)).run("person", text, many=True, spans=True, chunk_tokens=64)
    assert result.meta.long["chunks"] >= 4
    assert [(p.name, p.age, p.city) for p in result.data] == people
    for k, person in enumerate(result.data):
        (name,) = result.meta.spans[f"[{k}].name"]
        (city,) = result.meta.spans[f"[{k}].city"]
        assert text[name.start:name.end] == person.name and text[city.start:city.end] == "Lisbon"
        assert name.start < city.start and text.count("\n", name.start, city.start) == 1


def test_many_records_over_a_report() -> None:
    doc = DOCS["staff-05-80"]
    result = Extractor(ScriptedEngine(reader)).run("person", doc["text"], many=True, chunk_tokens=200)
    assert [p.model_dump() for p in result.data] == doc["label"]


# -- conflicts -----------------------------------------------------------------------------------

def _two_totals(rule: str) -> tuple[Any, str]:
    schema = {"type": "object", "properties": {"total": {"type": "number"}, "rows": {"type": "array",
              "items": {"type": "string"}}}, "required": ["total", "rows"], "x-merge-rules": {"total": rule}}
    task = task_from_json_schema(schema, name="totals")
    text = "Subtotal 10.00\n" + "".join(f"row {i} text\n" for i in range(60)) + "Total 12.50\n"

    def read(request: GenerationRequest) -> str:
        chunk = chunk_text(request)
        amounts = re.findall(r"\d+\.\d\d", chunk)
        return json.dumps({"total": float(amounts[0]) if amounts else None,
                           "rows": re.findall(r"row \d+ text", chunk)})

    return Extractor(ScriptedEngine(read)).run(task, text, chunk_tokens=80), text


def test_a_conflict_is_settled_by_the_fields_rule_and_reported() -> None:
    result, _ = _two_totals("nearest:total")
    assert result.data["total"] == 12.5
    assert result.meta.long["conflicts"] == [{"field": "total", "values": [10.0, 12.5], "chose": 12.5,
                                              "rule": "nearest:total"}]
    assert len(result.data["rows"]) == 60
    assert _two_totals("first")[0].data["total"] == 10.0
    assert _two_totals("last")[0].data["total"] == 12.5
    with pytest.raises(MergeConflict):
        _two_totals("raise")


def test_values_read_whole_and_in_part_at_the_same_characters_are_one_value() -> None:
    from extractor.longdoc.merge import chunk_record

    text = "Vendor: ACME Tools Ltd of Leeds\n" + "x\n" * 50
    chunks = split_document(text, 60)
    first = chunk_record(chunks[0], {"vendor": "ACME Tools"})
    second = chunk_record(chunks[0], {"vendor": "ACME Tools Ltd"})
    merged = merge_records([first, second], {"properties": {"vendor": {"type": "string"}}}, {}, text)
    assert merged.data == {"vendor": "ACME Tools Ltd"} and merged.conflicts == []


# -- validation of the merged record -------------------------------------------------------------

class CheckedItem(LineItem):
    @field_validator("description")
    @classmethod
    def capitalised(cls, value: str) -> str:
        if not value[:1].isupper():
            raise ValueError("a description starts with a capital letter, as printed")
        return value


class CheckedInvoice(Contract):
    contract_name = "checked_invoice"
    instructions = "Extract the invoice."
    line_items: list[CheckedItem]


def test_a_failed_merge_retries_only_the_chunks_its_errors_point_at() -> None:
    doc = DOCS["invoice-01-60"]
    spoiled: list[int] = []

    def read(request: GenerationRequest) -> str:
        record = read_invoice(chunk_text(request))
        items = record["line_items"]
        if len([r for r in engine.requests if "line_items" in r.schema.get("properties", {})]) == 4 and items:
            items[-1] = {**items[-1], "description": items[-1]["description"].lower()}
            spoiled.append(len(engine.requests))
        return json.dumps({"line_items": items})

    engine = ScriptedEngine(read)
    result = Extractor(engine).run(CheckedInvoice, doc["text"], chunk_tokens=300, grounded_decoding=False)
    chunks = result.meta.long["chunks"]
    assert spoiled and len(result.meta.long["retried_chunks"]) == 1
    assert len(engine.requests) == chunks + 1  # the one chunk again, not the document
    assert [i.model_dump() for i in result.data.line_items] == doc["label"]["line_items"]


# -- recall passes and completeness --------------------------------------------------------------

def _rows_of(request: GenerationRequest) -> list[str]:
    return [line for line in chunk_text(request).splitlines() if ITEM.match(line)]


def _skips_once(seen: set[str]) -> Any:
    def read(request: GenerationRequest) -> str:
        """Reads a chunk but skips the rows of items starting with B, C or G the first time it
        sees them (a piece that lost some)."""
        record = read_invoice(chunk_text(request))
        rows = _rows_of(request)
        kept = [item for item, row in zip(record["line_items"], rows, strict=True)
                if row[0] not in "BCG" or row in seen]
        seen.update(rows)
        return answer(request, {**record, "line_items": kept})
    return read


def test_rows_left_unread_are_rerun_alone_and_add_only_new_spans() -> None:
    doc = DOCS["invoice-04-110"]
    engine = CountingEngine(_skips_once(set()))
    result = Extractor(engine).run("invoice", doc["text"], chunk_tokens=300, grounded_decoding=False, spans=True)
    long = result.meta.long
    assert long["plan"] == "rows" and long["rows"] == 110 and long["passes"] == 2
    assert _items(result.data) == doc["label"]["line_items"]
    _check_item_spans(doc["text"], result)
    first, second = engine.requests[:engine.calls[0]], engine.requests[engine.calls[0]:]
    firsts = [row for r in first for row in _rows_of(r)]
    skipped = [row for k, row in enumerate(firsts) if row[0] in "BCG" and row not in firsts[:k]]  # twins: read
    rerun = [row for r in second for row in _rows_of(r)]
    assert rerun == skipped  # only those, in document order
    assert long["rerun_rows"] == len(rerun) > 0 and len(engine.calls) == 2
    assert long["completeness"][0]["unread_rows"] == 0 and long["completeness"][0]["complete"]


def test_a_list_still_short_is_never_returned_silently() -> None:
    doc = DOCS["invoice-04-110"]

    def blind(request: GenerationRequest) -> str:  # never sees the cork items
        record = read_invoice(chunk_text(request))
        record["line_items"] = [i for i in record["line_items"] if not i["description"].startswith("Cork")]
        return answer(request, record)

    engine = CountingEngine(blind)
    with pytest.raises(ExtractionFailed) as info:
        Extractor(engine).run("invoice", doc["text"], chunk_tokens=300, grounded_decoding=False)
    partial = info.value.partial  # type: ignore[attr-defined]
    missing = [i for i in doc["label"]["line_items"] if i["description"].startswith("Cork")]
    assert missing and len(partial["line_items"]) == 110 - len(missing)
    assert "add up" in str(info.value)
    # one re-run of the unread rows (the next would read nothing new), then the header view is
    # asked again with the errors
    rerun = engine.requests[engine.calls[0]:engine.calls[0] + engine.calls[1]]
    assert [row for r in rerun for row in _rows_of(r)] == [
        row for r in engine.requests[:engine.calls[0]] for row in _rows_of(r) if row.startswith("Cork")]
    assert len(engine.calls) == 3 and engine.calls[2] == 1


def test_a_list_short_of_the_printed_count_gets_a_recall_pass_when_read_by_size() -> None:
    """Without rows to plan (a list of strings), chunks by size: a list short of the count the
    document prints gets one more pass over what is still unread."""
    schema = {"type": "object", "properties": {"names": {"type": "array", "items": {"type": "string"}}},
              "required": ["names"]}
    task = task_from_json_schema(schema, name="names")
    names = [f"Name{i:02d}" for i in range(40)]
    text = "Number of entries: 40\n" + "".join(f"entry {n} here\n" for n in names)

    def forgetful(request: GenerationRequest) -> str:
        found = re.findall(r"entry (Name\d\d) here", chunk_text(request))
        return json.dumps({"names": [n for k, n in enumerate(found) if k % 3 != 2]})

    result = Extractor(ScriptedEngine(forgetful)).run(task, text, chunk_tokens=80)
    assert result.meta.long["plan"] == "chunks" and result.meta.long["passes"] == 2
    assert len(result.data["names"]) > len(names) * 2 // 3 + 2  # the pass added names
    assert set(result.data["names"]) <= set(names)


def test_a_cut_output_is_rerun_with_a_larger_budget() -> None:
    doc = DOCS["invoice-00-50"]

    def cut_once(request: GenerationRequest) -> str | GenerationResult:
        text = reader(request)
        if len(engine.requests) == 2:
            return GenerationResult(text=text[: len(text) // 2], finish_reason="length", prompt_tokens=1,
                                    completion_tokens=request.max_tokens)
        return text

    engine = ScriptedEngine(cut_once)
    result = Extractor(engine).run("invoice", doc["text"], chunk_tokens=300, grounded_decoding=False)
    assert _items(result.data) == doc["label"]["line_items"]
    assert result.meta.long["regrown_chunks"] == [1]
    cut, again = engine.requests[1], engine.requests[-1]
    assert again.messages == cut.messages and again.max_tokens == 2 * cut.max_tokens


# -- batching and streaming ----------------------------------------------------------------------

def test_the_chunks_of_a_document_go_to_the_engine_in_one_call() -> None:
    doc = DOCS["invoice-05-130"]
    engine = CountingEngine()
    result = Extractor(engine).run("invoice", doc["text"], chunk_tokens=300, grounded_decoding=False)
    assert engine.calls == [result.meta.long["chunks"]]


def _stream(doc: dict[str, Any], **options: Any) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        return [e async for e in Extractor(ScriptedEngine(reader)).astream(doc["schema"], doc["text"], **options)]
    return asyncio.run(go())


def test_streamed_values_are_sent_once_and_never_changed() -> None:
    doc = DOCS["invoice-06-150"]
    events = _stream(doc, chunk_tokens=300, grounded_decoding=False)
    assert events[-1]["event"] == "result"
    items = [e for e in events if e["event"] == "item"]
    anchors = [(e["start"], e["end"]) for e in items]
    assert len(anchors) == len(set(anchors))  # no item twice
    assert [e["data"] for e in sorted(items, key=lambda e: e["start"])] == events[-1]["data"]["line_items"]
    fields: dict[str, Any] = {}
    for e in events:
        if e["event"] == "field":
            assert fields.setdefault(e["field"], e["value"]) == e["value"]
            assert events[-1]["data"][e["field"]] == e["value"]
    assert set(fields) == {"vendor", "invoice_number", "date", "currency", "total"}
    first_item = next(i for i, e in enumerate(events) if e["event"] == "item")
    assert first_item < len(events) - 6  # items come before the end of the document


def test_streamed_records_many() -> None:
    doc = DOCS["staff-03-50"]
    events = _stream(doc, many=True, chunk_tokens=200)
    records = [e["data"] for e in events if e["event"] == "record"]
    assert records == doc["label"] == events[-1]["data"]


def test_service_streams_server_sent_events_and_the_client_reads_them() -> None:
    doc = DOCS["invoice-02-75"]
    app = make_app(ScriptedEngine(reader))

    async def go() -> tuple[list[dict[str, Any]], str]:
        async with AsyncClient(BASE, transport=httpx2.ASGITransport(app=app)) as client:
            events = [e async for e in client.stream("invoice", doc["text"], chunk_tokens=300,
                                                       grounded_decoding=False)]
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE) as raw:
            response = await raw.post("/extract/invoice?stream=true", json={"text": ""})
            empty = response.text if response.status_code == 200 else f"status {response.status_code}"
        return events, empty

    events, empty = asyncio.run(go())
    assert events[-1]["event"] == "result" and events[-1]["data"] == doc["label"]
    assert sum(e["event"] == "item" for e in events) == 75
    assert empty == "status 422"  # an error before the stream starts is a plain problem


@pytest.mark.model
def test_the_local_engine_counts_tokens_and_a_20000_character_invoice_is_chunked() -> None:
    from extractor.engines.local import LocalEngine
    from extractor.longdoc.run import needs_chunks

    engine = LocalEngine()
    try:
        doc = DOCS["invoice-10-260"]
        task = Extractor(engine).task("invoice")
        assert len(doc["text"]) > 19_000
        assert engine.count_prompt_tokens([{"role": "user", "content": doc["text"]}]) > engine.context_length // 2
        assert needs_chunks(engine, task, doc["text"], Extractor(engine).options)
        from extractor.longdoc.run import LongRun
        from extractor.pipeline.prompt import build_messages

        run = LongRun(engine, task, doc["text"], Extractor(engine).options)
        assert len(run.jobs) > 1
        for job in run.jobs:  # every piece's prompt and its own budget fit the context
            messages = build_messages(job.task, job.piece.text)
            assert engine.count_prompt_tokens(messages) + job.task.max_tokens <= engine.context_length
    finally:
        engine.close()


def test_extract_run_stream_prints_each_record_once_then_the_result(tmp_path: Any,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from extractor.cli.main import main
    from tests.fake_openai import Reply, fake_openai

    def read(body: dict[str, Any]) -> Reply:
        schema = body["response_format"]["json_schema"]["schema"]
        if "ok" in schema.get("properties", {}):
            return Reply('{"ok": true}')
        return Reply(reader(GenerationRequest(messages=body["messages"], schema=schema, max_tokens=1)))

    doc = DOCS["staff-02-40"]
    path = tmp_path / "report.txt"
    path.write_text(doc["text"])
    with fake_openai(read) as server:
        code = main(["run", "person", str(path), "--many", "--stream", "--chunk-tokens", "200", "--engine",
                     "vllm-http", "--engine-option", f"base_url={server.url}"])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == ["record"] * 40 + ["result"]
    assert [e["data"] for e in events[:-1]] == doc["label"] == events[-1]["data"]
    assert events[-1]["meta"]["long"]["chunks"] > 3
